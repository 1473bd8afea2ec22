"""The text side of generation: ids turned into text as they come (never splitting a
UTF-8 character, cut before stop strings, holding back only what could still start
one), one Output per generated text with what --json reports about it, and the seed
of each sampled output. Knows nothing of models or devices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gptcli.config import SampleConfig
from gptcli.tokenizer import StreamDecoder


class StopCutter:
    """Cuts text before the first stop string, holding back only as much as could still
    be the start of one (so streaming stays as live as possible)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.pending, self.hit = stops, "", False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(self.pending) + 1))
                    if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Output:
    """One generated text and everything --json reports about it."""

    prompt_index: int
    prompt: str
    sample: int  # sample index (sampling) or rank (beam search)
    decoder: StreamDecoder
    cutter: StopCutter
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finish_reason: str | None = None  # eos | length | stop
    score: float | None = None  # beam search: the length-penalized score
    tokens_per_second: float = 0.0  # of the batch (or beam search) that made it

    def record(self, cfg: SampleConfig) -> dict:
        """The --json record."""
        record = {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
                  "finish_reason": self.finish_reason, "logprob": self.logprob, **strategy_fields(cfg),
                  "seed": cfg.seed if cfg.strategy == "sample" else None,
                  "tokens_per_second": round(self.tokens_per_second, 2)}
        if cfg.strategy == "beam":
            record.update(rank=self.sample, score=self.score)
        elif cfg.num_samples > 1:
            record["sample"] = self.sample
        return record

    def take(self, token: int, logprob: float, eot_id: int) -> str:
        """Consume one token; return the text that is now safe to show."""
        if token == eot_id:
            self.finish_reason = "eos"
            return self.close()
        self.token_ids.append(token)
        self.logprob += logprob
        piece = self.cutter.feed(self.decoder.step(token))
        self.text += piece
        if self.cutter.hit:
            self.finish_reason = "stop"
        return piece

    def close(self) -> str:
        """No more tokens: release the bytes and text held back, and settle the reason."""
        rest = ""
        if not self.cutter.hit:
            rest = self.cutter.feed(self.decoder.flush())
            if not self.cutter.hit:
                rest += self.cutter.flush()
        self.text += rest
        if self.cutter.hit:
            self.finish_reason = "stop"
        elif self.finish_reason is None:
            self.finish_reason = "length"
        return rest


def sample_seed(seed: int, prompt: str, sample: int) -> int:
    """A generator seed for one output from the run's seed, its prompt and its sample
    index alone: an output never depends on what else shares its batch or file."""
    digest = hashlib.blake2b(f"{seed}:{sample}:{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def strategy_fields(cfg: SampleConfig) -> dict:
    common = {"strategy": cfg.strategy, "max_new_tokens": cfg.max_new_tokens, "stop": list(cfg.stop),
              "repetition_penalty": cfg.repetition_penalty}
    if cfg.strategy == "sample":
        return {**common, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "min_p": cfg.min_p}
    if cfg.strategy == "beam":
        return {**common, "beams": cfg.num_beams, "length_penalty": cfg.length_penalty,
                "early_stopping": cfg.early_stopping, "num_return": cfg.num_return}
    return common
