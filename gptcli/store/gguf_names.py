"""llama.cpp's GGUF names for a gptcli GPT: tensors, tokenizer fields and metadata.

Maps gptcli's weight names to llama.cpp's `gpt2` architecture (tests/test_gguf.py checks
the table against gguf's own TensorNameMap), says which runs that architecture cannot
represent, and turns a byte-level BPE tokenizer into GGUF's token list, token types and
merges. Pure: no files, and gguf is imported by the writer (commands/export_gguf.py).
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from gptcli.config import ModelConfig
from gptcli.errors import UsageError
from gptcli.tokenizer import BPETokenizer

ARCH = "gpt2"
TOKENIZER_MODEL = "gpt2"  # llama.cpp's byte-level BPE
# llama.cpp's name for GPT-2's split pattern, which tokenizers' ByteLevel(use_regex=True) applies
PRE_TOKENIZER = "gpt-2"

_TOP = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
        "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
_BLOCK = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
          "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_BLOCK_NAME = re.compile(r"h\.(\d+)\.(.+)\.(weight|bias)")

# Token types as llama.cpp numbers them (gguf.TokenType), kept here so this module needs no gguf
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def gguf_name(ours: str) -> str:
    """gptcli's weight name -> llama.cpp's (KeyError for a name gpt2 has no place for)."""
    if ours in _TOP:
        return _TOP[ours]
    m = _BLOCK_NAME.fullmatch(ours)
    if m is None or m.group(2) not in _BLOCK:
        raise KeyError(ours)
    return f"blk.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"


def refusal(cfg: ModelConfig, run: object) -> str | None:
    """Why llama.cpp's gpt2 cannot compute this model, or None."""
    if cfg.arch != "gpt":
        return (f"{run} is an {cfg.arch.upper()} model: llama.cpp's gpt2 architecture is a transformer, so only a "
                "gpt run can be exported as GGUF")
    if cfg.pos_encoding != "learned":
        return (f"{run} uses --pos-encoding {cfg.pos_encoding}: llama.cpp's gpt2 reads a learned position table, "
                "so only a learned-position run can be exported as GGUF")
    return None


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The float32 tensors of the GGUF file, by llama.cpp name, in gptcli's (out, in)
    layout, which is llama.cpp's too. The output projection is tied to token_embd and
    left out: llama.cpp's gpt2 loader marks output.weight optional and reads token_embd
    in its place (tests/test_gguf.py decodes such files in llama.cpp). A --no-bias run
    gets zero biases, which compute the same: that loader requires every bias."""
    out = {gguf_name(name): t.float().numpy() for name, t in state.items() if name != "lm_head.weight"}
    if not cfg.bias:
        zeros = {"attn_norm": cfg.n_embd, "attn_qkv": 3 * cfg.n_embd, "attn_output": cfg.n_embd,
                 "ffn_norm": cfg.n_embd, "ffn_up": 4 * cfg.n_embd, "ffn_down": cfg.n_embd}
        for i in range(cfg.n_layer):
            for part, n in zeros.items():
                out[f"blk.{i}.{part}.bias"] = np.zeros(n, dtype=np.float32)
        out["output_norm.bias"] = np.zeros(cfg.n_embd, dtype=np.float32)
    return out


def check_tokenizer(tok: BPETokenizer, run: object) -> None:
    """Refuse a tokenizer llama.cpp would split or normalise differently from gptcli: one
    with a normalizer, or a pre-tokenizer other than GPT-2's byte-level split."""
    spec = json.loads(tok.json_text)
    pre = spec.get("pre_tokenizer") or {}
    gpt2_split = (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) is True
                  and pre.get("add_prefix_space", False) is False)
    if spec.get("normalizer") is not None or not gpt2_split:
        raise UsageError(f"{run}'s tokenizer.json does not split text as GPT-2 does (ByteLevel, no prefix space, "
                         "no normalizer): llama.cpp would tokenize it differently, so it cannot be exported as GGUF")
    model = spec.get("model") or {}
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UsageError(f"{run}'s tokenizer.json uses BPE options llama.cpp's gpt2 tokenizer lacks: it cannot be "
                         "exported as GGUF")


def vocabulary(tok: BPETokenizer, run: object) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their llama.cpp token types, merges as "a b") of a byte-level BPE."""
    check_tokenizer(tok, run)
    added = {i: t for i, t in tok.tok.get_added_tokens_decoder().items()}
    tokens, types = [], []
    for i in range(tok.vocab_size):
        token = tok.tok.id_to_token(i)
        if token is None:
            raise UsageError(f"{run}'s tokenizer.json has no token with id {i}: GGUF needs ids 0..{tok.vocab_size - 1}")
        tokens.append(token)
        types.append(NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED)
    merges = json.loads(tok.json_text)["model"].get("merges") or []
    # tokenizers >= 0.20 writes a merge as a pair, older ones as "a b"; GGUF stores "a b"
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]
