"""Which model a config builds, and what it costs, for every architecture gptcli trains:
GPT (model.py) and the recurrent family (recurrent.py). Code that handles any model
builds it and counts it here; code that needs GPT's internals (the fast decoder,
attention maps, Hugging Face export) checks `config.recurrent` first.
"""

from __future__ import annotations

from gptcli import recurrent
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.recurrent import RecurrentLM

LanguageModel = GPT | RecurrentLM


def build(cfg: ModelConfig, init: bool = True) -> LanguageModel:
    """The model for cfg. init=False skips the random initialization of the weights, for
    a model whose weights are loaded next (it took half of building the tiny model)."""
    return RecurrentLM(cfg, init) if cfg.recurrent else GPT(cfg, init)


def param_count(cfg: ModelConfig) -> int:
    """The built model's num_params(), from the config alone (the tied lm_head once)."""
    if cfg.recurrent:
        return recurrent.param_count(cfg)
    C = cfg.n_embd
    per_block = 12 * C * C + (13 * C if cfg.bias else 2 * C)  # attention 4C², MLP 8C², norms and biases
    positions = cfg.block_size * C if cfg.pos_encoding == "learned" else 0
    return cfg.vocab_size * C + positions + cfg.n_layer * per_block + (2 * C if cfg.bias else C)
