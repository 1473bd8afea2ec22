"""Typed settings: the model's shape, the training run, sampling, each command's options,
and the named presets.

Each setting is defined once, in its dataclass field: type, default, help text and
allowed range (`setting(...)`, settings.py). The CLI's options and docs/cli.md are made
from these definitions, and `validate` checks an instance against them, whether its
values came from flags or from a config.json. Imports nothing heavy: the CLI builds
these while `--help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptcli.architectures import ARCHITECTURES
from gptcli.architectures import of as architecture
from gptcli.errors import Setting as S
from gptcli.errors import SettingError, UsageError
from gptcli.settings import check, check_value, format_duration, parse_duration, setting, specs
from gptcli.workspace import DEFAULT_VOCAB

MIN_VOCAB = 257  # 256 byte tokens plus <|endoftext|>
MAX_SEED = 2**32 - 1  # what every RNG gptcli seeds accepts
DEVICES = ("auto", "cpu", "cuda", "mps")


_WITH_OPTIONS: list[type] = []  # every settings class whose fields the CLI gives as options


def with_options(cls: type) -> type:
    """Mark a settings class as one the CLI gives options for (flag() searches them)."""
    _WITH_OPTIONS.append(cls)
    return cls


def flag(setting: str) -> str:
    """`n_embd` -> `--n-embd`; `num_beams` -> `--beams`: the option a setting is given by
    (a setting no option gives, like beta1, keeps its name)."""
    for cls in _WITH_OPTIONS:
        if setting in specs(cls):
            given = specs(cls)[setting][1].flag
            return setting if given == "" else (given or "--" + setting.replace("_", "-")).split("/")[0]
    return "--" + setting.replace("_", "-")


ARCHS = tuple(ARCHITECTURES)


@with_options
@dataclass
class ModelConfig:
    arch: str = setting("gpt", "The architecture: gpt, or a recurrent network (lstm, gru, rnn) as large as the "
                        "preset's GPT.", choices=ARCHS)
    vocab_size: int = setting(DEFAULT_VOCAB, "Tokens in a newly trained tokenizer, the 256 bytes and <|endoftext|> "
                              "included.", low=MIN_VOCAB)
    block_size: int = setting(256, "Context length in tokens.", low=1, high=2**17)
    n_layer: int = setting(4, "Transformer blocks.", low=1, high=1024)
    n_head: int = setting(4, "Attention heads.", low=1, high=1024)
    n_embd: int = setting(256, "Embedding width.", low=1, high=2**16)
    dropout: float = setting(0.0, "Dropout probability, training only.", low=0.0, high=1.0, open_high=True)
    attn_dropout: float | None = setting(None, "Dropout on the attention weights, training only. With 0, CPU "
                                         "attention keeps its fused kernel.", low=0.0, high=1.0, open_high=True,
                                         default_text="--dropout")
    bias: bool = setting(True, "Biases in Linear and LayerNorm layers, as GPT-2.", flag="--bias/--no-bias")
    pos_encoding: str = setting("learned", "learned (GPT-2) or sinusoidal (fixed, not stored).",
                                choices=("learned", "sinusoidal"))
    layer_norm_eps: float = setting(1e-5, "LayerNorm epsilon (GPT-2's).", low=0.0, high=1.0, open_low=True, flag="")

    def validate(self) -> ModelConfig:
        check(self)
        architecture(self).validate(self)
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def attention_dropout(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout


DEFAULT_MAX_STEPS = 2000  # when no --max-steps, --max-time or --epochs is given


@with_options
@dataclass
class TrainConfig:
    batch_size: int = setting(16, "Sequences per micro-batch.", low=1, high=2**16)
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", low=1, high=2**16)
    lr: float = setting(1e-3, "Peak learning rate, reached after warmup.", low=0.0, high=10.0, open_low=True)
    min_lr: float | None = setting(None, "Final learning rate of the cosine decay.", low=0.0, high=10.0,
                                   default_text="lr/10")
    warmup_steps: int = setting(100, "Linear warmup steps (at most a tenth of the schedule).", low=0, high=10**9)
    schedule: str = setting("cosine", "After warmup: cosine decay to the floor, or wsd (stable, then a linear decay "
                            "over the last fifth of the run).", choices=("cosine", "wsd"))
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the hidden matrices, AdamW for embeddings, "
                             "biases and norms.", choices=("adamw", "muon"))
    weight_decay: float = setting(0.1, "Weight decay, on matrices only.", low=0.0, high=100.0)
    regularize_beyond: float = setting(0.0, "Dropout and weight decay by how often a run repeats its training "
                                       "text: none for a run of at most PASSES passes over it, in full from twice "
                                       "that, in proportion between; 0: always in full. A --max-time run's passes "
                                       "are estimated after its warmup, which runs without.", low=0.0, high=10**6,
                                       metavar="PASSES")
    beta1: float = setting(0.9, "AdamW beta1.", low=0.0, high=1.0, open_high=True, flag="")
    beta2: float = setting(0.95, "AdamW beta2.", low=0.0, high=1.0, open_high=True, flag="")
    grad_clip: float = setting(1.0, "Clip the gradient norm to this; 0 disables.", low=0.0, high=1e6)
    val_fraction: float = setting(0.1, "Fraction of the corpus tokens, taken from the end, held out for validation "
                                  "(when no --val is given).", low=0.0, high=1.0, open_low=True, open_high=True)
    max_steps: int | None = setting(None, "Stop after this many optimizer steps.", low=1, high=10**9,
                                    default_text=f"{DEFAULT_MAX_STEPS:,} if no other limit", resumable=True)
    max_time: float | None = setting(None, "Stop after this much training time, e.g. 90s, 10m, 1h.", low=0.0,
                                     high=10**7, open_low=True, parse=parse_duration, show=format_duration,
                                     metavar="DURATION", resumable=True)
    epochs: float | None = setting(None, "Stop after this many passes over the training tokens.", low=0.0,
                                   high=10**6, open_low=True, resumable=True)
    eval_interval: int = setting(200, "Steps between evaluations and checkpoints.", low=1, high=10**9)
    eval_iters: int = setting(20, "Batches per evaluation.", low=1, high=10**6)
    patience: int | None = setting(None, "Stop after this many evaluations without a better validation loss.",
                                   low=1, high=10**6, resumable=True)
    log_interval: int = setting(50, "Steps between progress updates and metrics lines.", low=1, high=10**9,
                                resumable=True)
    seed: int = setting(1337, "Random seed: same seed, data and machine, same losses.", low=0, high=MAX_SEED)
    device: str = setting("auto", "Where to train: auto picks cuda, then mps, then cpu.", choices=DEVICES,
                          resumable=True)
    dtype: str = setting("auto", "Precision: auto picks bf16 where the hardware runs it fast.",
                         choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = setting(False, "torch.compile the model (falls back to eager if it fails).",
                            flag="--compile/--no-compile", resumable=True)

    def validate(self) -> TrainConfig:
        check(self)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise SettingError(S("min_lr"), " must be between 0 and ", S("lr"), f" ({self.lr}), got {self.min_lr}")
        return self

    @property
    def min_lr_value(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr


# A preset names a model shape and the training settings that suit it. `tiny` trains
# usefully on a 2-core CPU in minutes; `gpt2` is the 124M model. A preset's "muon"
# settings replace its others when the optimizer is Muon, which is the default for a GPT
# trained from scratch where a preset has them (train_plan.settings_for).
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0),
        "train": dict(batch_size=16, lr=2e-3, warmup_steps=100),  # with --optimizer adamw: the recipe until 2026-11
        # Muon needs regularisation to see a 1 MB corpus 15 times in 10 minutes, and is
        # better without it in a run of 5 passes; residual dropout costs little, attention
        # dropout a quarter of the speed (docs/benchmarks.md, "Training recipes at equal time")
        "muon": dict(optimizer="muon", lr=4e-3, weight_decay=0.5, dropout=0.2, attn_dropout=0.0,
                     regularize_beyond=4.0),
    },
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1),
        "train": dict(batch_size=32, lr=1e-3, warmup_steps=200),
    },
    "medium": {
        "model": dict(n_layer=8, n_head=8, n_embd=512, block_size=512, dropout=0.1),
        "train": dict(batch_size=32, lr=6e-4, warmup_steps=500),
    },
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0),
        "train": dict(batch_size=16, lr=6e-4, warmup_steps=700),
    },
}
DEFAULT_PRESET = "tiny"


def preset(name: str) -> dict[str, dict]:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@with_options
@dataclass
class SampleConfig:
    strategy: str = setting("sample", "greedy, sample or beam.", choices=("greedy", "sample", "beam"), flag="")
    max_new_tokens: int = setting(256, "Tokens to generate per output.", low=0, high=10**7, short="-n")
    temperature: float = setting(0.8, "Sampling temperature; 0 means greedy.", low=0.0, high=1e4, applies="sample")
    top_k: int | None = setting(None, "Sample from the k most likely tokens.", low=1, high=2**22, applies="sample")
    top_p: float | None = setting(0.95, "Sample from the smallest set reaching probability p.", low=0.0, high=1.0,
                                  open_low=True, default_text="0.95 unless --top-k", applies="sample")
    min_p: float | None = setting(None, "Sample only tokens at least this share as likely as the most likely one "
                                  "(after top-k and top-p; llama.cpp uses 0.05).", low=0.0, high=1.0,
                                  default_text="off", applies="sample")
    repetition_penalty: float = setting(1.0, "Above 1 discourages tokens already in the context.", low=1e-6,
                                        high=1e6)
    num_samples: int = setting(1, "Sampled outputs per prompt.", low=1, high=10**6, applies="sample")
    num_beams: int = setting(1, "Beam search with this many beams.", low=1, high=1024, flag="--beams",
                             default_text="no beam search")
    length_penalty: float = setting(1.0, "Beam score = log-prob sum / length**this.", low=-100.0, high=100.0,
                                    applies="beam")
    early_stopping: bool = setting(False, "Beam: stop once --beams hypotheses are finished (HF semantics).",
                                   flag="--early-stopping", applies="beam")
    num_return: int = setting(1, "Beam: best hypotheses to return per prompt.", low=1, high=1024, applies="beam")
    stop: tuple[str, ...] = setting((), "Cut the output before this string; repeatable.")
    seed: int = setting(0, "Seed for sampling (any 64-bit integer).", low=-(2**63), high=2**63 - 1,
                        default_text="random, reported by --json")

    def validate(self) -> SampleConfig:
        check(self)
        if self.num_return > self.num_beams:
            raise SettingError(S("num_return"), " must be between 1 and ", S("num_beams"),
                               f" ({self.num_beams}), got {self.num_return}")
        if any(s == "" for s in self.stop):
            raise SettingError(S("stop"), " strings must not be empty")
        return self

    @classmethod
    def settle(cls, given: dict, greedy: bool = False) -> SampleConfig:
        """The strategy the settings given ask for (only the fields that were set),
        refusing contradictions instead of silently ignoring a setting: which settings
        apply to sampling only or beams only is each field's `applies`."""
        given = dict(given)
        for name, value in given.items():  # each value's type and range first: the rules below compare them
            if name in specs(cls):
                check_value(name, value, *specs(cls)[name])
        beams = given.get("num_beams", 1)
        greedy = greedy or given.get("temperature") == 0
        applies = {name: spec.applies for name, (_, spec) in specs(cls).items() if name in given}
        sampling = [f for f, kind in applies.items() if kind == "sample"]  # in field order
        beam_only = [f for f, kind in applies.items() if kind == "beam"]
        if beams > 1:
            if greedy or sampling:
                culprit = "greedy" if greedy and "temperature" not in given else sampling[0]
                raise SettingError(S("num_beams"), f" {beams} searches, it does not sample: drop ", S(culprit))
            strategy = "beam"
        else:
            if beam_only:
                raise SettingError(S(beam_only[0]), " only applies to beam search: add ", S("num_beams"), " N (N > 1)")
            if greedy:
                extra = [f for f in sampling if f != "temperature" and not (f == "num_samples" and given[f] == 1)]
                if extra or ("temperature" in given and given["temperature"] != 0):
                    raise SettingError("greedy decoding takes the most likely token: ",
                                       S(extra[0] if extra else "temperature"), " does not apply")
                given.pop("temperature", None)
                strategy = "greedy"
            else:
                strategy = "sample"
                if "top_k" in given and "top_p" not in given:
                    given["top_p"] = None  # an explicit --top-k replaces the default nucleus
        return cls(strategy=strategy, **given).validate()


@with_options
@dataclass
class GenerateOptions:
    """generate's own options, beside the sampling settings."""

    batch_size: int = setting(8, "Outputs generated together from --prompts.", low=1, high=2**16)
    device: str = setting("auto", "Where to run: auto picks cuda, then mps, then cpu.", choices=DEVICES)
    dtype: str = setting("float32", "Weights while decoding: float32 (exact); float16 (x86 CPU, GPT models: "
                         "faster for one prompt or beams, nearly always the same tokens); int8 (CPU, GPT "
                         "models: faster, more tokens differ).", choices=("float32", "float16", "int8"))
    interactive: bool = setting(False, "Type text, and the model continues it, turn after turn, with its cache kept "
                                "(Ctrl-C stops a reply; Ctrl-D quits; /help).", flag="--interactive", short="-i")
    reverse_prompt: tuple[str, ...] = setting((), "With --interactive: hand control back once the model writes "
                                              "this text (kept in the text); repeatable.", short="-r", metavar="TEXT")

    def validate(self) -> GenerateOptions:
        check(self)
        return self


@with_options
@dataclass
class EvalOptions:
    """eval's options."""

    stride: int | None = setting(None, "Tokens between window starts.", low=1, high=2**17,
                                 default_text="half the context")
    batch_size: int = setting(8, "Windows per forward pass.", low=1, high=2**16)
    device: str = setting("auto", "Where to run: auto picks cuda, then mps, then cpu.", choices=DEVICES)

    def validate(self) -> EvalOptions:
        check(self)
        return self


@with_options
@dataclass
class AttentionOptions:
    """attention's options."""

    layer: int | None = setting(None, "Layer to show, from 0.", low=0, high=1023,
                                default_text="the last in the terminal view; all in --out and --json")
    head: int | None = setting(None, "Head to show, from 0.", low=0, high=1023,
                               default_text="the mean over heads in the terminal view; all in --out and --json")
    top: int = setting(3, "Tokens listed per query in the terminal view.", low=1, high=1000)
    device: str = setting("auto", "Where to run: auto picks cuda, then mps, then cpu.", choices=DEVICES)

    def validate(self) -> AttentionOptions:
        check(self)
        return self


