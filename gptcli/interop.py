"""Hugging Face GPT-2 folders in and out: `gptcli import-hf` and `gptcli export-hf`.

Maps weight names between gptcli's GPT and GPT2LMHeadModel's layout (HF keeps the
attention and MLP projections as Conv1D, (in, out): transposed relative to nn.Linear),
checks that an HF config describes a model gptcli computes exactly, and writes either
side's folder atomically (staged in a temp folder, renamed into place). Never unpickles
and never imports transformers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.errors import RunError, UsageError
from gptcli.model import GPT
from gptcli.tokenizer import EOT, TOKENIZER_FILE, BPETokenizer

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older HF versions saved
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def to_hf_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gptcli names -> HF names (transformer.*; lm_head is tied, so left out)."""
    return {"transformer." + name: (t.t().contiguous() if name.endswith(_CONV1D) else t)
            for name, t in ours.items() if name != "lm_head.weight"}


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names (with or without the transformer. prefix) -> gptcli names. Drops HF's
    mask buffers and a tied lm_head."""
    out = {}
    for name, t in hf.items():
        if name.endswith(_HF_BUFFERS) or name == "lm_head.weight":
            continue
        ours = name.removeprefix("transformer.")
        out[ours] = t.t().contiguous() if ours.endswith(_CONV1D) else t
    return out


# -- import ------------------------------------------------------------------------


def _hf_model_config(src: Path) -> ModelConfig:
    path = src / "config.json"
    if not path.is_file():
        raise UsageError(f"{src} has no config.json: not a Hugging Face model folder")
    cfg = ckpt.read_json(path)
    if not isinstance(cfg, dict) or cfg.get("model_type") != "gpt2":
        raise UsageError(f"{path}: model_type is {cfg.get('model_type') if isinstance(cfg, dict) else None!r}, "
                         "only gpt2 is supported")
    refuse = {
        "scale_attn_by_inverse_layer_idx": cfg.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "scale_attn_weights=false": cfg.get("scale_attn_weights", True) is False,
        "tie_word_embeddings=false": cfg.get("tie_word_embeddings", True) is False,
    }
    for what, on in refuse.items():
        if on:
            raise UsageError(f"{path}: {what} is not supported (gptcli computes plain GPT-2 attention)")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise UsageError(f"{path}: activation_function {act!r} is not supported (GPT-2's tanh GELU, gelu_new, is)")
    n_embd = cfg.get("n_embd", 768)
    if cfg.get("n_inner") not in (None, 4 * n_embd):
        raise UsageError(f"{path}: n_inner {cfg['n_inner']} is not supported (must be 4 * n_embd)")
    try:
        return ModelConfig(vocab_size=int(cfg.get("vocab_size", 50257)), block_size=int(cfg.get("n_positions", 1024)),
                           n_layer=int(cfg.get("n_layer", 12)), n_head=int(cfg.get("n_head", 12)), n_embd=int(n_embd),
                           dropout=0.0, bias=True, pos_encoding="learned",
                           layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5))).validate()
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: {e}") from None


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


def import_hf(src: Path, out: Path, overwrite: bool = False) -> dict:
    """Turn an HF GPT-2 folder into a gptcli run folder at `out`."""
    if not src.is_dir():
        raise UsageError(f"{src}: no such folder" if not src.exists() else f"{src} is not a folder")
    model_cfg = _hf_model_config(src)
    weights = _hf_weights(src)
    tok = _hf_tokenizer(src)
    check_out_folder(out, overwrite)
    tensors = from_hf_state_dict(ckpt.read_tensors(weights))
    model = GPT(model_cfg)
    ckpt.check_tensors(model, tensors, weights, against="its config.json")
    if tok.vocab_size != model_cfg.vocab_size:
        raise UsageError(f"{src}: the tokenizer has {tok.vocab_size} tokens but the model has {model_cfg.vocab_size}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=False)
    model.lm_head.weight = model.wte.weight
    summary = {"imported_from": str(src), "steps": 0}
    with _staged(out, overwrite) as stage:
        ckpt.write_tokenizer(stage, tok)
        ckpt.write_config(stage, model_cfg, tok, summary)
        ckpt.save_weights(stage / ckpt.WEIGHTS, model)
    return {"run": str(out), "params": model.num_params(), "model": model_cfg.__dict__, "vocab_size": tok.vocab_size}


# -- export ------------------------------------------------------------------------


def export_hf(run: Path, out: Path, overwrite: bool = False) -> dict:
    """Write a run folder as an HF GPT-2 folder that transformers loads."""
    model, tok, doc = ckpt.load_run(run)
    cfg = model.config
    if cfg.pos_encoding != "learned":
        raise UsageError(f"{run} uses --pos-encoding {cfg.pos_encoding}: GPT-2 has learned positions, so it cannot "
                         "be exported as GPT-2")
    if not cfg.bias:
        raise UsageError(f"{run} was trained with --no-bias: GPT-2 layers have biases, so it cannot be exported as GPT-2")
    check_out_folder(out, overwrite)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": True,
        "bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "torch_dtype": "float32",
    }
    tokenizer_config = {"tokenizer_class": "GPT2TokenizerFast", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
                        "model_max_length": cfg.block_size, "add_prefix_space": False, "clean_up_tokenization_spaces": False}
    generation_config = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id}
    with _staged(out, overwrite) as stage:
        for name, doc_ in (("config.json", hf_config), ("tokenizer_config.json", tokenizer_config),
                           ("generation_config.json", generation_config)):
            (stage / name).write_text(json.dumps(doc_, indent=2) + "\n", encoding="utf-8")
        ckpt.save_tensors(to_hf_state_dict(ckpt.weights_dict(model)), stage / "model.safetensors")
        tok.save(stage / TOKENIZER_FILE)
    return {"out": str(out), "params": model.num_params()}


# -- writing a folder in one piece ----------------------------------------------------


def check_out_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty: pass --overwrite to replace it")


class _staged:
    """Build a folder beside `out`, then swap it in: OUT is untouched until all is written."""

    def __init__(self, out: Path, overwrite: bool):
        self.out, self.overwrite = out, overwrite

    def __enter__(self) -> Path:
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=parent))
        except OSError as e:
            raise UsageError(f"cannot write to {parent}: {e.strerror or e}") from None
        self.stage.chmod(0o755)
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            if issubclass(exc_type, OSError):  # a full disk while writing: say so, OUT is untouched
                raise RunError(f"could not write {self.out}: {exc.strerror or exc}") from None
            return
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            self.out.rename(old)
        self.stage.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
