"""`gptcli import-hf` and `gptcli export-hf`: Hugging Face GPT-2 folders in and out.

Reads an HF folder (config.json, model.safetensors, tokenizer.json or vocab.json +
merges.txt) into a run folder, and writes a run folder as an HF folder that
transformers loads. Both build the output beside its target and swap it in, so on any
error OUT is left as it was. The name mapping is hf_weights.py's. Never unpickles.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from gptcli.architectures import of as architecture
from gptcli.budget import check_model
from gptcli.errors import UsageError
from gptcli.model import GPT
from gptcli.settings import to_dict
from gptcli.store import checkpoint as ckpt
from gptcli.store import folders, weights
from gptcli.store.hf_weights import (
    from_hf_header,
    from_hf_state_dict,
    hf_config,
    model_config_from_hf,
    to_hf_state_dict,
)
from gptcli.store.readers import read_header, read_json
from gptcli.store.runlock import lock_owner, run_lock
from gptcli.tokenizer import EOT, BPETokenizer
from gptcli.workspace import TOKENIZER_FILE


@dataclass
class HFRequest:
    src: Path  # import: the HF folder; export: the run folder
    out: Path
    overwrite: bool = False


@dataclass
class HFResult:
    summary: dict  # what --json prints
    note: str  # what stderr says

    def to_json(self) -> dict:
        return self.summary

    def to_text(self) -> str:
        return self.note


def _is_hf_folder(folder: Path) -> bool:
    try:
        doc = read_json(folder / "config.json")
    except UsageError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("model_type"), str)


# -- import ------------------------------------------------------------------------


def _hf_tokenizer(src: Path) -> BPETokenizer:
    if (src / TOKENIZER_FILE).is_file():
        return BPETokenizer.load(src / TOKENIZER_FILE)
    vocab, merges = src / "vocab.json", src / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return BPETokenizer.from_vocab_merges(vocab, merges)
    raise UsageError(f"{src} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt")


def _hf_weights(src: Path) -> Path:
    weights = src / "model.safetensors"
    if weights.is_file():
        return weights
    pickles = [p.name for p in (src / "pytorch_model.bin", src / "model.bin", src / "model.pt") if p.is_file()]
    if pickles:
        raise UsageError(f"{src} holds only {pickles[0]}, a pickle: gptcli never unpickles files. Convert it where you "
                         "trust it, e.g. GPT2LMHeadModel.from_pretrained(SRC).save_pretrained(SRC) (transformers "
                         "writes model.safetensors)")
    if (src / "model.safetensors.index.json").is_file():
        raise UsageError(f"{src} holds a sharded checkpoint; save it as a single model.safetensors")
    raise UsageError(f"{src} has no model.safetensors")


def import_hf(req: HFRequest) -> HFResult:
    """Turn an HF GPT-2 folder into a gptcli run folder at `out`."""
    src, out = req.src, req.out
    if not src.is_dir():
        raise UsageError(f"{src}: no such folder" if not src.exists() else f"{src} is not a folder")
    if not (src / "config.json").is_file():
        raise UsageError(f"{src} has no config.json: not a Hugging Face model folder")
    model_cfg = model_config_from_hf(read_json(src / "config.json"), str(src / "config.json"))
    path = _hf_weights(src)
    tok = _hf_tokenizer(src)
    if tok.vocab_size != model_cfg.vocab_size:
        raise UsageError(f"{src}: the tokenizer has {tok.vocab_size} tokens but the model has {model_cfg.vocab_size}")
    folders.check_out(out, req.overwrite, label=str(out), kind="a gptcli run folder", is_kind=ckpt.is_run,
                      writer=lock_owner)
    check_model(model_cfg, f"{src}'s model")
    model = GPT(model_cfg)
    weights.check_header(from_hf_header(read_header(path)), weights.expected_shapes(model), path, "its config.json")
    weights.load_state(model, from_hf_state_dict(weights.read_tensors(path)))
    with run_lock(out, lambda _: None) if out.is_dir() else contextlib.nullcontext(), folders.staged(out) as stage:
        ckpt.write_tokenizer(stage, tok)
        ckpt.write_config(stage, model_cfg, tok, {"imported_from": str(src), "steps": 0})
        weights.save_weights(stage / ckpt.WEIGHTS, model)
    params = model.num_params()
    return HFResult({"run": str(out), "params": params, "model": to_dict(model_cfg), "vocab_size": tok.vocab_size},
                    f"imported {src} -> {out} ({params:,} parameters)")


# -- export ------------------------------------------------------------------------


def export_hf(req: HFRequest) -> HFResult:
    """Write a run folder as an HF GPT-2 folder that transformers loads."""
    run, out = req.src, req.out
    cfg = ckpt.model_config(ckpt.read_config(run), run)
    if not architecture(cfg).exports_hf:
        raise UsageError(f"{run} is an {cfg.arch} model: export-hf writes GPT-2 folders, and only a gpt model is one")
    model, tok, _ = ckpt.load_run(run)
    if cfg.pos_encoding != "learned":
        raise UsageError(f"{run} uses --pos-encoding {cfg.pos_encoding}: GPT-2 has learned positions, so it cannot "
                         "be exported as GPT-2")
    if not cfg.bias:
        raise UsageError(f"{run} was trained with --no-bias: GPT-2 layers have biases, so it cannot be exported "
                         "as GPT-2")
    folders.check_out(out, req.overwrite, label=str(out), kind="a Hugging Face model folder", is_kind=_is_hf_folder)
    tokenizer_config = {"tokenizer_class": "GPT2TokenizerFast", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
                        "model_max_length": cfg.block_size, "add_prefix_space": False,
                        "clean_up_tokenization_spaces": False}
    generation_config = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id}
    with folders.staged(out) as stage:
        for name, doc in (("config.json", hf_config(cfg, tok.eot_id)), ("tokenizer_config.json", tokenizer_config),
                          ("generation_config.json", generation_config)):
            (stage / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        weights.save_tensors(to_hf_state_dict(weights.weights_dict(model)), stage / "model.safetensors")
        tok.save(stage / TOKENIZER_FILE)
    return HFResult({"out": str(out), "params": model.num_params()},
                    f"exported {run} -> {out}: load it with GPT2LMHeadModel.from_pretrained and "
                    "AutoTokenizer.from_pretrained")
