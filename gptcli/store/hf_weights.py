"""Hugging Face GPT-2 names and configs, both ways.

Maps weight names between gptcli's GPT and GPT2LMHeadModel's layout (HF keeps the
attention and MLP projections as Conv1D, (in, out): transposed relative to nn.Linear),
turns an HF config.json into a ModelConfig after checking it describes a model gptcli
computes exactly, and writes the HF config for an export. Never imports transformers;
reading and writing folders is commands/hf.py's.
"""

from __future__ import annotations

import torch

from gptcli.config import ModelConfig
from gptcli.errors import SettingError, UsageError
from gptcli.store.readers import TensorInfo

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older HF versions saved
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HF_KEYS = {"block_size": "n_positions", "layer_norm_eps": "layer_norm_epsilon"}  # other settings keep their names


def to_hf_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gptcli names -> HF names (transformer.*; lm_head is tied, so left out)."""
    return {"transformer." + name: (t.t().contiguous() if name.endswith(_CONV1D) else t)
            for name, t in ours.items() if name != "lm_head.weight"}


def our_name(hf_name: str) -> tuple[str | None, bool]:
    """An HF tensor name (with or without the transformer. prefix) -> (gptcli's name, or
    None for HF's mask buffers and a tied lm_head; whether it is a transposed Conv1D)."""
    if hf_name.endswith(_HF_BUFFERS) or hf_name == "lm_head.weight":
        return None, False
    ours = hf_name.removeprefix("transformer.")
    return ours, ours.endswith(_CONV1D)


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors -> gptcli's names and layout."""
    out = {}
    for name, t in hf.items():
        ours, conv1d = our_name(name)
        if ours is not None:
            out[ours] = t.t().contiguous() if conv1d else t
    return out


def from_hf_header(header: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    """An HF file's header as gptcli's names and shapes, to check before reading it."""
    out = {}
    for name, info in header.items():
        ours, conv1d = our_name(name)
        if ours is not None:
            out[ours] = TensorInfo(info.dtype, info.shape[::-1] if conv1d else info.shape)
    return out


def model_config_from_hf(cfg: object, where: str) -> ModelConfig:
    """The ModelConfig an HF GPT-2 config.json describes; refuses what gptcli would not
    compute exactly. `where` names the file in messages."""
    if not isinstance(cfg, dict) or cfg.get("model_type") != "gpt2":
        raise UsageError(f"{where}: model_type is {cfg.get('model_type') if isinstance(cfg, dict) else None!r}, "
                         "only gpt2 is supported")
    refuse = {
        "scale_attn_by_inverse_layer_idx": cfg.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "scale_attn_weights=false": cfg.get("scale_attn_weights", True) is False,
        "tie_word_embeddings=false": cfg.get("tie_word_embeddings", True) is False,
    }
    for what, on in refuse.items():
        if on:
            raise UsageError(f"{where}: {what} is not supported (gptcli computes plain GPT-2 attention)")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise UsageError(f"{where}: activation_function {act!r} is not supported (GPT-2's tanh GELU, gelu_new, is)")
    n_embd, n_inner = cfg.get("n_embd", 768), cfg.get("n_inner")
    if n_inner is not None and not (isinstance(n_embd, int) and n_inner == 4 * n_embd):
        raise UsageError(f"{where}: n_inner {cfg['n_inner']} is not supported (must be 4 * n_embd)")
    model_cfg = ModelConfig(vocab_size=cfg.get("vocab_size", 50257), block_size=cfg.get("n_positions", 1024),
                            n_layer=cfg.get("n_layer", 12), n_head=cfg.get("n_head", 12), n_embd=n_embd,
                            dropout=0.0, bias=True, pos_encoding="learned",
                            layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5))
    try:
        return model_cfg.validate()
    except SettingError as e:
        raise UsageError(f"{where}: {e.render(lambda name: HF_KEYS.get(name, name))}") from None


def hf_config(cfg: ModelConfig, eot_id: int) -> dict:
    """The config.json of GPT2LMHeadModel for a gptcli GPT."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32",
    }
