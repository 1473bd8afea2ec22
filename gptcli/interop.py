"""Weight names between gptcli's GPT and Hugging Face's GPT2LMHeadModel layout.

HF stores the attention and MLP projections as Conv1D, (in, out): transposed relative
to nn.Linear. Pure tensor mapping; nothing here imports transformers.
"""

from __future__ import annotations

import torch

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def to_hf_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gptcli names -> HF names (transformer.* plus the tied lm_head.weight)."""
    out = {}
    for name, t in ours.items():
        if name == "lm_head.weight":
            continue
        out["transformer." + name] = t.t().contiguous() if name.endswith(_CONV1D) else t
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> gptcli names. Skips the tied lm_head and HF's non-weight buffers."""
    out = {}
    for name, t in hf.items():
        if not name.startswith("transformer.") or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        ours = name[len("transformer."):]
        out[ours] = t.t().contiguous() if ours.endswith(_CONV1D) else t
    return out
