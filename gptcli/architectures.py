"""The architectures gptcli trains, registered as objects that answer what they support:
GPT (model.py) and the recurrent family (recurrent.py). Code that handles any model asks
`of(cfg)` (build it, count it, decode with it, which generation weights, attention maps
and Hugging Face export it has) instead of testing the architecture's name. Imports no
torch: the CLI checks settings against these answers before anything heavy loads; the
model classes load on the first build.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any

from gptcli.errors import Setting as S
from gptcli.errors import SettingError

if TYPE_CHECKING:
    from gptcli.config import ModelConfig
    from gptcli.generation.kernels import Prepared
    from gptcli.model import GPT
    from gptcli.recurrent import RecurrentLM

    LanguageModel = GPT | RecurrentLM
else:
    LanguageModel = Any  # for annotations; GPT | RecurrentLM


@dataclasses.dataclass(frozen=True)
class Architecture(abc.ABC):
    name: str
    summary: str  # what `--arch NAME` trains, for help texts
    weights: tuple[str, ...]  # how generation may hold the weight matrices (kernels.WEIGHTS)
    attention_maps: bool  # `gptcli attention` can show it
    exports_hf: bool  # `gptcli export-hf` writes it as a transformers GPT-2 folder
    muon_recipe: bool  # trained from scratch, it takes a preset's Muon settings by default
    unused: tuple[tuple[str, Any], ...] = ()  # ModelConfig settings it has no use for (refused when given),
    # each with the value its configs record

    @abc.abstractmethod
    def build(self, cfg: ModelConfig, init: bool = True) -> LanguageModel:
        """The model for cfg. init=False skips the random initialization of the weights,
        for a model whose weights are loaded next (it took half of building tiny)."""

    @abc.abstractmethod
    def param_count(self, cfg: ModelConfig) -> int:
        """The built model's num_params(), from the config alone (the tied lm_head once)."""

    @abc.abstractmethod
    def decoder(self, model: LanguageModel, weights: str = "float32", prepared: Prepared | None = None):
        """A fresh decoder (generation/decoders.py) over the model."""

    def prepare(self, model: LanguageModel, weights: str) -> Prepared | None:
        """What the decoders of one engine share (None: nothing to prepare)."""
        return None

    def validate(self, cfg: ModelConfig) -> None:  # noqa: B027 -- most architectures need no more
        """Checks beyond each setting's own range (none by default)."""

    @abc.abstractmethod
    def describe(self, cfg: ModelConfig) -> str:
        """The shape in words, for a training run's first line."""

    def sized_like(self, cfg: ModelConfig, params: int) -> ModelConfig:
        """cfg, resized to about `params` parameters where this architecture is sized by
        matching (the recurrent ones take the preset GPT's count); else cfg itself."""
        return cfg


class Transformer(Architecture):
    def build(self, cfg, init=True):
        from gptcli.model import GPT

        return GPT(cfg, init)

    def param_count(self, cfg):
        C = cfg.n_embd
        per_block = 12 * C * C + (13 * C if cfg.bias else 2 * C)  # attention 4C², MLP 8C², norms and biases
        positions = cfg.block_size * C if cfg.pos_encoding == "learned" else 0
        return cfg.vocab_size * C + positions + cfg.n_layer * per_block + (2 * C if cfg.bias else C)

    def decoder(self, model, weights="float32", prepared=None):
        from gptcli.generation.decoders import FastDecoder

        return FastDecoder(model, weights, prepared)

    def prepare(self, model, weights):
        from gptcli.generation.kernels import Prepared

        return Prepared(model, weights)

    def validate(self, cfg):
        if cfg.n_embd % cfg.n_head:
            raise SettingError(S("n_embd"), f" {cfg.n_embd} is not divisible by ", S("n_head"), f" {cfg.n_head}")
        if cfg.pos_encoding == "sinusoidal" and cfg.n_embd % 2:
            raise SettingError(S("pos_encoding"), " sinusoidal needs an even ", S("n_embd"), f", got {cfg.n_embd}")

    def describe(self, cfg):
        return f"{cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size}"


class Recurrent(Architecture):
    def build(self, cfg, init=True):
        from gptcli.recurrent import RecurrentLM

        return RecurrentLM(cfg, init)

    def param_count(self, cfg):
        from gptcli.recurrent import param_count

        return param_count(cfg)

    def decoder(self, model, weights="float32", prepared=None):
        from gptcli.generation.decoders import RecurrentDecoder

        return RecurrentDecoder(model)

    def describe(self, cfg):
        return f"{cfg.arch}, {cfg.n_layer} layers, {cfg.n_embd} wide, windows of {cfg.block_size}"

    def sized_like(self, cfg, params):
        from gptcli.recurrent import matched_width

        return dataclasses.replace(cfg, n_embd=matched_width(cfg, params))


_NO_ATTENTION = (("pos_encoding", "learned"), ("n_head", 1), ("attn_dropout", None))  # no heads, no positions
ARCHITECTURES = {a.name: a for a in (
    Transformer("gpt", "GPT-2's decoder-only transformer", weights=("float32", "float16", "int8"),
                attention_maps=True, exports_hf=True, muon_recipe=True),
    *(Recurrent(name, summary, weights=("float32",), attention_maps=False, exports_hf=False, muon_recipe=False,
                unused=_NO_ATTENTION)
      for name, summary in (("lstm", "an LSTM"), ("gru", "a GRU"), ("rnn", "an Elman RNN (tanh)"))),
)}


def of(cfg: ModelConfig) -> Architecture:
    return ARCHITECTURES[cfg.arch]


def build(cfg: ModelConfig, init: bool = True) -> LanguageModel:
    return of(cfg).build(cfg, init)


def param_count(cfg: ModelConfig) -> int:
    return of(cfg).param_count(cfg)
