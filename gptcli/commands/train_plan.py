"""What `gptcli train` will do, settled before any slow work: the settings (a preset with
the user's on top), the run folder, and for --resume what may change and what must not.
Every check here only reads; commands/train.py acts on the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from gptcli import budget, workspace
from gptcli.architectures import ARCHITECTURES, param_count
from gptcli.architectures import of as architecture
from gptcli.config import DEFAULT_MAX_STEPS, DEFAULT_PRESET, ModelConfig, TrainConfig, flag, preset
from gptcli.corpus import Document
from gptcli.errors import Setting as S
from gptcli.errors import SettingError, UsageError
from gptcli.settings import from_dict, specs, to_dict
from gptcli.store import checkpoint as ckpt
from gptcli.store import folders
from gptcli.store.runlock import lock_owner, refuse_if_locked
from gptcli.tokenizer import BPETokenizer
from gptcli.workspace import TOKENIZER_FILE

# Settings a resumed run may change: where it runs and when it stops.
RESUMABLE = tuple(name for name, (_, spec) in specs(TrainConfig).items() if spec.resumable)
# The model settings --init may change: regularisation for the fine-tune, not the shape.
INIT_MAY_CHANGE = ("dropout", "attn_dropout")


@dataclass
class TrainRequest:
    paths: list[str]  # files, folders, '-' (may be empty with resume)
    preset: str | None = None  # a name from config.PRESETS; None: the default one
    settings: dict = field(default_factory=dict)  # ModelConfig and TrainConfig fields the user set
    out: Path | None = None
    resume: Path | None = None
    init: Path | None = None
    overwrite: bool = False
    tokenizer: Path | None = None
    val: list[str] = field(default_factory=list)
    allow_corpus_change: bool = False  # resume on a corpus whose digests differ from the recorded ones
    text_field: str | None = None  # the records' text field (JSON lines, Parquet); None: "text"



def settings_for(preset_name: str, given: dict, from_scratch: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """The preset's shape and training settings, with what the user gave on top. The
    preset's "muon" settings join in for --optimizer muon, and when no optimizer is
    given for a GPT trained from scratch (the recurrent nets and fine-tuning keep AdamW,
    the recipe they were measured with). A recurrent arch takes the preset's depth; its
    width is matched later (matched_shape)."""
    chosen = preset(preset_name)
    arch = given.get("arch", chosen["model"].get("arch", "gpt"))
    if arch not in ARCHITECTURES:
        raise SettingError(S("arch"), f" must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    muon_default = "muon" in chosen and ARCHITECTURES[arch].muon_recipe and from_scratch
    layers = [chosen["model"], chosen["train"]]
    if given.get("optimizer", "muon" if muon_default else "adamw") == "muon":
        layers.append(chosen.get("muon", {}))
    settings = {name: value for layer in [*layers, given] for name, value in layer.items()}
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k not in model_names}
    for name, value in ARCHITECTURES[arch].unused:
        if name in given:
            raise UsageError(f"{flag(name)} does not apply to --arch {arch}: a recurrent model has no "
                             "attention heads or positions")
        model[name] = value
    return ModelConfig(**model), TrainConfig(**train)


def matched_shape(cfg: ModelConfig, preset_name: str, given: dict) -> ModelConfig:
    """A recurrent model as large as the preset's GPT (same vocabulary and depth; the
    width solved for the parameter count), unless the user set the width."""
    if "n_embd" in given:
        return cfg
    shape = preset(preset_name)["model"]
    gpt = dataclasses.replace(cfg, arch="gpt", n_embd=shape["n_embd"], n_head=shape["n_head"])  # the GPT it stands for
    return architecture(cfg).sized_like(cfg, param_count(gpt))


# -- planning: every check before any work ------------------------------------------


@dataclass
class Plan:
    """What a run will do, settled before any slow work."""

    run: Path
    model_cfg: ModelConfig  # vocab_size is set once the tokenizer is known
    train_cfg: TrainConfig
    paths: list[str]
    val_paths: list[str]
    previous: dict  # the training summary of a resumed run; empty for a new one
    tok: BPETokenizer | None  # known up front when resuming or fine-tuning
    init_weights: dict | None = None  # --init: the weights to start from
    warnings: list[str] = field(default_factory=list)  # said once, before training starts
    text_field: str | None = None  # the records' text field, as given (or recorded, on resume)


def plan_resume(req: TrainRequest) -> Plan:
    run = req.resume
    if req.out is not None or req.overwrite or req.init is not None or req.tokenizer is not None:
        raise UsageError("--resume continues a run in place: it takes no --out, --overwrite, --init or --tokenizer")
    doc = ckpt.read_config(run)
    ckpt.refuse_links(run)  # resume writes the folder in place: never through a link out of it
    for folder in (run, run / ckpt.RESUME, run / ckpt.RESUME_OLD):  # the swap of resume/ deletes the old one's files
        if folder.is_dir():
            folders.check_writable(folder, str(folder), "a resumed run is written in place; copy it somewhere writable")
    ckpt.read_trainer_state(run)  # a damaged state stops here, before any slow work
    previous = doc.get("training") or {}
    train_cfg = from_dict(TrainConfig, previous.get("config") or {}, f"{run / ckpt.CONFIG} training config")
    if "val_fraction" not in (previous.get("config") or {}) and previous.get("val_fraction") is not None:
        train_cfg.val_fraction = previous["val_fraction"]  # a run from before val_fraction was a setting
    model_cfg = ckpt.model_config(doc, run)
    recorded = {**to_dict(model_cfg), **to_dict(train_cfg)}
    fixed = sorted(k for k, v in req.settings.items() if k not in RESUMABLE and recorded.get(k) != v)
    if req.preset is not None and req.preset != previous.get("preset"):
        fixed.append("preset")
    if fixed:  # every one named: a user fixing them one run at a time would not thank us
        raise UsageError(f"{', '.join(flag(name) for name in fixed)} cannot change when resuming; only "
                         f"{', '.join(flag(name) for name in RESUMABLE)} can")
    refuse_if_locked(run)  # before any slow work; run_lock checks again when training starts
    for name in set(req.settings) & set(RESUMABLE):
        setattr(train_cfg, name, req.settings[name])
    train_cfg.dtype = previous.get("dtype", train_cfg.dtype)  # the precision it ran in, for exactness
    paths = req.paths or previous.get("corpus") or []
    if "<stdin>" in paths and not req.paths:
        raise UsageError(f"{run} was trained on stdin: pipe the same text again with `gptcli train - --resume {run}`")
    tok = BPETokenizer.load(run / TOKENIZER_FILE)
    ckpt.check_tokenizer(tok, model_cfg, doc, run)
    for _ in ckpt.iter_metrics(run):  # a damaged metrics.jsonl stops here, before anything is written
        pass
    return Plan(run, model_cfg, train_cfg.validate(), paths, req.val or previous.get("val_paths") or [], previous, tok,
                text_field=req.text_field or previous.get("text_field"))


def plan_new(req: TrainRequest) -> Plan:
    if req.tokenizer is not None and req.init is not None:
        raise UsageError("--tokenizer and --init disagree: --init uses the tokenizer of the run it starts from")
    if req.allow_corpus_change:
        raise UsageError("--allow-corpus-change only applies with --resume")
    model_cfg, train_cfg = settings_for(req.preset or DEFAULT_PRESET, req.settings, from_scratch=req.init is None)
    train_cfg.validate()
    if train_cfg.max_steps is None and train_cfg.max_time is None and train_cfg.epochs is None:
        train_cfg.max_steps = DEFAULT_MAX_STEPS
    if not req.paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    model_cfg.validate()  # the vocabulary given, or the default: the tokenizer's replaces it later
    if req.val and "val_fraction" in req.settings:
        raise UsageError("--val-fraction splits the corpus when there is no --val: with --val, drop it")
    run = req.out or workspace.default_run_folder(req.paths)
    folders.check_out(run, req.overwrite, label=f"--out {run}", kind="a gptcli run folder", is_kind=ckpt.is_run,
                      writer=lock_owner, hint=f", or --resume {run} to continue it")
    inside = [p for p in [*req.paths, *req.val] if p != "-" and folders.is_within(Path(p), run)]
    if inside and run.exists():
        raise UsageError(f"{inside[0]} is inside {run}, which --overwrite would replace: move it out first")
    tok, weights, warnings = None, None, []
    if req.init is not None:
        init_model, tok, _ = ckpt.load_run(req.init)
        warnings = init_overrides(req, init_model.config)
        weights = init_model.state_dict()
        model_cfg = dataclasses.replace(init_model.config, dropout=model_cfg.dropout,
                                        attn_dropout=model_cfg.attn_dropout)
    elif req.tokenizer is not None:
        tok = BPETokenizer.load(req.tokenizer)
    budget.check_training(dataclasses.replace(model_cfg, vocab_size=tok.vocab_size if tok else model_cfg.vocab_size),
                          train_cfg.batch_size)
    return Plan(run, model_cfg, train_cfg, req.paths, req.val, {}, tok, weights, warnings, req.text_field)


def init_overrides(req: TrainRequest, init_cfg: ModelConfig) -> list[str]:
    """--init takes the model's shape from the run it starts from. A shape flag that
    contradicts it is refused, all of them in one line (the weights fix the shape: there
    is nothing to honour it with). A --preset's shape is a bundle the user did not spell
    out: its shape fields that differ are named in one warning, and its training
    settings still apply."""
    recorded = to_dict(init_cfg)
    shape = [name for name in recorded if name not in INIT_MAY_CHANGE]
    clash = [name for name in shape if name in req.settings and req.settings[name] != recorded[name]]
    if clash:
        given = ", ".join(f"{flag(n)} {req.settings[n]}" for n in clash)
        has = ", ".join(f"{n} {recorded[n]}" for n in clash)
        verb, pronoun = ("disagrees", "it") if len(clash) == 1 else ("disagree", "them")
        raise UsageError(f"{given} {verb} with the model --init {req.init} starts from ({has}): --init takes the "
                         f"model shape from that run, so drop {pronoun}")
    if req.preset is None:
        return []
    dropped = [f"{n} {v}" for n, v in preset(req.preset)["model"].items()
               if n in shape and n not in req.settings and v != recorded[n]]
    if not dropped:
        return []
    return [f"--init {req.init} fixes the model shape, so --preset {req.preset}'s {', '.join(dropped)} is not used "
            f"(its training settings are)"]


def check_same_corpus(plan: Plan, docs: list[Document], val_docs: list[Document], allow: bool) -> None:
    """--resume on other text than the run was trained (or validated) on is refused: the
    batches would differ, and "best" would compare losses on different validation sets."""
    for what, key, given in (("corpus", "corpus_digests", docs), ("validation text", "val_digests", val_docs)):
        recorded = plan.previous.get(key)
        if recorded is not None and recorded != [d.digest for d in given] and not allow:
            raise UsageError(f"the {what} differs from the one {plan.run} was trained on (its contents changed, or "
                             "other files were given): pass --allow-corpus-change to continue anyway")


