"""Typed configuration: the model's shape, the training run, and the named presets.

Owns validation of every number a user can type (so bad values fail before any work
starts) and the JSON form stored in a run folder's config.json. Imports nothing heavy:
the CLI builds these while `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from gptcli.errors import UsageError

MIN_VOCAB = 257  # 256 byte tokens plus <|endoftext|>


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # rows of the token embedding; equals the tokenizer's vocabulary
    block_size: int = 256  # longest context the model sees, in tokens
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 256  # width of the residual stream
    dropout: float = 0.0  # on attention weights and residual branches, training only
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    pos_encoding: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (fixed, not stored)
    layer_norm_eps: float = 1e-5  # GPT-2's epsilon

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.vocab_size < MIN_VOCAB:
            raise UsageError(f"vocabulary size must be at least {MIN_VOCAB} (256 bytes + <|endoftext|>), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise UsageError(f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise UsageError(f"--pos-encoding sinusoidal needs an even --n-embd, got {self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in ("learned", "sinusoidal"):
            raise UsageError(f"--pos-encoding must be 'learned' or 'sinusoidal', got {self.pos_encoding!r}")
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise UsageError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float | None = None  # floor of the cosine decay; None means lr / 10
    warmup_steps: int = 100  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    max_steps: int | None = None  # stop after this many optimizer steps
    max_time: float | None = None  # stop after this many seconds of training
    epochs: float | None = None  # stop after this many passes over the training tokens
    eval_interval: int = 200  # optimizer steps between evaluations and checkpoints
    eval_iters: int = 20  # batches per evaluation
    patience: int | None = None  # stop after this many evaluations without improvement
    log_interval: int = 50  # steps between progress lines / metrics records
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model

    def validate(self) -> "TrainConfig":
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.min_lr is not None and not (0 <= self.min_lr <= self.lr):
            raise UsageError(f"--min-lr must be between 0 and --lr ({self.lr}), got {self.min_lr}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise UsageError(f"--grad-clip must be 0 or more, got {self.grad_clip}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise UsageError(f"--max-steps must be positive, got {self.max_steps}")
        if self.max_time is not None and not (self.max_time > 0 and math.isfinite(self.max_time)):
            raise UsageError(f"--max-time must be positive, got {self.max_time}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise UsageError(f"--epochs must be positive, got {self.epochs}")
        if self.patience is not None and self.patience <= 0:
            raise UsageError(f"--patience must be positive, got {self.patience}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise UsageError(f"--device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UsageError(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        return self

    @property
    def min_lr_value(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr


# A preset names a model shape and the training settings that suit it. `tiny` trains
# usefully on a 2-core CPU in minutes; `gpt2` is the 124M model.
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0),
        "train": dict(batch_size=16, lr=2e-3, warmup_steps=100),
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
DEFAULT_MAX_STEPS = 2000  # when no --max-steps, --max-time or --epochs is given


def preset(name: str) -> dict[str, dict]:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)")


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '1h30m' -> 5400.0 (seconds)."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m or (m.group(2) == "" and m.end() != len(s)):
            raise UsageError(f"cannot read duration {text!r}: use e.g. 90s, 10m, 1h or 1h30m")
        total += float(m.group(1)) * scale[m.group(2)]
        pos = m.end()
    if not s or not (total > 0 and math.isfinite(total)):
        raise UsageError(f"duration must be positive, got {text!r}")
    return total


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - known
    if unknown:
        raise UsageError(f"config.json has unknown model fields: {', '.join(sorted(unknown))}")
    try:
        return ModelConfig(**d).validate()
    except TypeError as e:
        raise UsageError(f"config.json model section is malformed: {e}") from None


def train_config_from_dict(d: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})



@dataclass
class SampleConfig:
    strategy: str = "sample"  # greedy | sample | beam
    max_new_tokens: int = 256  # tokens to generate per output (end-of-text may stop it sooner)
    temperature: float = 0.8  # sampling: divide logits by this
    top_k: int | None = None  # sampling: keep the k most likely tokens
    top_p: float | None = 0.95  # sampling: keep the smallest set whose probability reaches p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (CTRL/HF rule)
    num_samples: int = 1  # sampling: outputs per prompt
    num_beams: int = 1  # beam search width
    length_penalty: float = 1.0  # beam score = sum of log-probs / generated_length ** length_penalty
    early_stopping: bool = False  # beam: stop once num_beams hypotheses are finished (HF semantics)
    num_return: int = 1  # beam: best hypotheses returned per prompt
    stop: tuple[str, ...] = ()  # output is cut before the first of these strings
    seed: int = 0  # one generator per output, seeded from (seed, prompt's sample index)

    def validate(self) -> "SampleConfig":
        if self.strategy not in ("greedy", "sample", "beam"):
            raise UsageError(f"unknown strategy {self.strategy!r}")
        if self.max_new_tokens < 0:
            raise UsageError(f"--max-new-tokens must be 0 or more, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UsageError(f"--temperature must be 0 or more, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise UsageError(f"--top-k must be positive, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise UsageError(f"--repetition-penalty must be positive, got {self.repetition_penalty}")
        if self.num_samples < 1:
            raise UsageError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.num_beams < 1:
            raise UsageError(f"--beams must be at least 1, got {self.num_beams}")
        if not 1 <= self.num_return <= self.num_beams:
            raise UsageError(f"--num-return must be between 1 and --beams ({self.num_beams}), got {self.num_return}")
        if not math.isfinite(self.length_penalty):
            raise UsageError(f"--length-penalty must be a number, got {self.length_penalty}")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop strings must not be empty")
        return self


def sample_config_from_flags(given: dict) -> SampleConfig:
    """Build the strategy from the flags the user actually gave, refusing contradictions
    instead of silently ignoring a flag. `given` holds only flags that were set."""
    beams = given.get("num_beams", 1)
    greedy = given.pop("greedy", False) or given.get("temperature") == 0
    sampling_flags = [f for f in ("temperature", "top_k", "top_p", "num_samples") if f in given]
    beam_flags = [f for f in ("length_penalty", "early_stopping", "num_return") if f in given]

    def flag(name: str) -> str:
        return "--" + {"num_beams": "beams"}.get(name, name).replace("_", "-")

    if beams > 1:
        if greedy or sampling_flags:
            what = "--greedy" if greedy and "temperature" not in given else flag(sampling_flags[0])
            raise UsageError(f"--beams {beams} searches, it does not sample: drop {what}")
        strategy = "beam"
    else:
        if beam_flags:
            raise UsageError(f"{flag(beam_flags[0])} only applies to beam search: add --beams N (N > 1)")
        if greedy:
            extra = [f for f in sampling_flags if f != "temperature" and not (f == "num_samples" and given[f] == 1)]
            if extra or ("temperature" in given and given["temperature"] != 0):
                culprit = flag(extra[0]) if extra else "--temperature"
                raise UsageError(f"greedy decoding takes the most likely token: {culprit} does not apply")
            given.pop("temperature", None)
            strategy = "greedy"
        else:
            strategy = "sample"
            if "top_k" in given and "top_p" not in given:
                given["top_p"] = None  # an explicit --top-k replaces the default nucleus
    return SampleConfig(strategy=strategy, **given).validate()
