"""The generation engine: a run folder loaded once for a device and weight kind, ready to
generate. `Generator` owns the model, its tokenizer and the prepared weight matrices its
decoders share (kernels.Prepared); it turns prompts and a SampleConfig into Outputs
(text, ids, finish reason, counts), streamed piece by piece. It is gptcli's Python API
(`gptcli.load`), and what `generate` and `compare` run on. Knows nothing of flags,
stdout or files beyond the run folder; errors are gptcli's (errors.py) as exceptions.

Threads: once built, a Generator may serve any number of threads at once in every
method (`generate`, `complete`, `stream`, `outputs`, `steps`, `beams`, `score`): each
call makes its own decoder, cache, text decoders and random generators, the model's
weights are only read, and the prepared matrices are filled under a lock. Outputs do
not depend on what runs beside them (tests/test_engine.py).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptcli.architectures import of as architecture
from gptcli.budget import check_generation, check_scoring
from gptcli.config import EvalOptions, GenerateOptions, SampleConfig
from gptcli.device import pick_device, pick_precision
from gptcli.errors import UsageError
from gptcli.generation.kernels import has_fp16_kernel
from gptcli.generation.search import Hypothesis, beam_search, decode_steps
from gptcli.generation.session import Session
from gptcli.generation.text import Output, StopCutter, sample_seed
from gptcli.scoring import Score, score_tokens, window_stride
from gptcli.settings import specs
from gptcli.store import checkpoint as ckpt
from gptcli.tokenizer import check_text


@dataclass
class Piece:
    """New text of one output as it is produced. Each output's last piece has `final`
    set, with the Output's figures settled; final pieces come in input order."""

    output: Output
    text: str
    final: bool = False


class Generator:
    """A loaded run folder: `Generator("checkpoints/run", dtype="float16")`. run=None takes
    the newest run under ./checkpoints/, else the model shipped with gptcli; `note`
    hears which (the CLI prints it)."""

    def __init__(self, run: str | os.PathLike | None = None, *, device: str = "auto", dtype: str = "float32",
                 note: Callable[[str], None] | None = None):
        GenerateOptions(device=device, dtype=dtype).validate()
        self.run_dir = ckpt.resolve_run(Path(run) if run is not None else None, note or (lambda _: None))
        self.config = ckpt.model_config(ckpt.read_config(self.run_dir), self.run_dir)
        self.device = pick_device(device)
        self.architecture = architecture(self.config)
        _check_weights(dtype, self.architecture, self.config, self.device)
        self.model, self.tokenizer, self.run_config = ckpt.load_run(self.run_dir, self.device)
        self.dtype = dtype
        self.prepared = self.architecture.prepare(self.model, dtype)
        self.context_limit = self.decoder().context_limit  # positions a row may hold (None: no limit)
        self._warm: set[int] = set()
        self._lock = threading.Lock()

    # -- token ids ----------------------------------------------------------------

    def encode(self, prompts: list[str], warn: Callable[[str], None] | None = None) -> list[list[int]]:
        """Each prompt's ids: an empty one starts a new document (<|endoftext|>), a long
        one keeps its last block_size tokens (and `warn` hears of it)."""
        block, out = self.config.block_size, []
        for i, text in enumerate(prompts):
            if not isinstance(text, str):
                raise UsageError(f"a prompt must be a string, got {type(text).__name__}")
            ids = self.tokenizer.encode_tail(check_text(text, "the prompt"), block + 1) or [self.tokenizer.eot_id]
            if len(ids) > block:
                if warn:
                    warn(f"prompt {i + 1} is longer than the model's context: keeping its last {block} tokens")
                ids = ids[-block:]
            out.append(ids)
        return out

    def ready(self, sample: SampleConfig, rows: int) -> None:
        """Check that `rows` rows of this sampling fit in memory, and prepare the weights
        for that many rows (once per row count: see FastDecoder.warm_up)."""
        check_generation(self.config, rows, sample.max_new_tokens, sample.num_beams if sample.strategy == "beam" else 1)
        with self._lock:
            if self.prepared is None or rows in self._warm:
                return
        self.decoder().warm_up(rows)
        with self._lock:  # only once it worked (a thread racing this one warms up too: harmless)
            self._warm.add(rows)

    def steps(self, prompts: list[list[int]], sample: SampleConfig, generators: list[torch.Generator] | None = None,
              stop_at_eot: bool = True) -> Iterator[tuple[list[int], list[float]]]:
        """Greedy or sampled: every step's new token per row and its log-probability
        (search.decode_steps). stop_at_eot=False keeps going past <|endoftext|>."""
        eot = self.tokenizer.eot_id if stop_at_eot else -1
        return _in_inference_mode(decode_steps(self.model, prompts, sample, eot, generators, self.dtype,
                                               self.prepared))

    def decoder(self):
        """A new decoder of this model (one row or many, a cache of its own) sharing the
        engine's prepared weights."""
        return self.architecture.decoder(self.model, self.dtype, self.prepared)

    def beams(self, prompt: list[int], sample: SampleConfig, stop_at_eot: bool = True,
              interrupted: Callable[[], bool] | None = None) -> list[Hypothesis]:
        """Beam search (search.beam_search): the best sample.num_return hypotheses."""
        with torch.inference_mode():
            return beam_search(self.model, prompt, sample, self.tokenizer.eot_id if stop_at_eot else -1, self.dtype,
                               self.prepared, interrupted)

    # -- text ---------------------------------------------------------------------

    def outputs(self, prompts: list[str], sample: SampleConfig, batch_size: int = 8,
                warn: Callable[[str], None] | None = None) -> Iterator[Piece]:
        """Every output of the prompts: sample.num_samples per prompt (or num_return
        beams), generated batch_size at a time, as pieces of text."""
        GenerateOptions(batch_size=batch_size).validate()
        encoded = self.encode(prompts, warn)
        if not encoded:
            return iter(())
        beam = sample.strategy == "beam"
        self.ready(sample, sample.num_beams if beam else min(batch_size, len(prompts) * sample.num_samples))
        if beam:
            return self.beam_outputs(prompts, encoded, sample)
        return self._sampled_outputs(prompts, encoded, sample, batch_size)

    def beam_outputs(self, prompts: list[str], encoded: list[list[int]], sample: SampleConfig,
                     interrupted: Callable[[], bool] | None = None) -> Iterator[Piece]:
        """Beam search, one prompt (its text, and its ids) at a time; each output is
        whole when its search ends."""
        for i, ids in enumerate(encoded):
            t0 = time.perf_counter()
            hyps = self.beams(ids, sample, interrupted=interrupted)
            rate = sum(len(h.tokens) for h in hyps) / max(time.perf_counter() - t0, 1e-9)
            for rank, h in enumerate(hyps):
                o = self.new_output(i, prompts[i], rank, sample)
                for t in h.tokens:
                    if o.finish_reason:
                        break
                    o.take(t, 0.0, self.tokenizer.eot_id)
                if not o.finish_reason:
                    o.close()
                o.logprob, o.score, o.tokens_per_second = h.logprob, h.score, rate
                yield Piece(o, o.text, final=True)

    def _sampled_outputs(self, prompts: list[str], encoded: list[list[int]], sample: SampleConfig,
                         batch_size: int) -> Iterator[Piece]:
        """Greedy or sampled outputs, batch_size at a time, each with its own generator."""
        eot = self.tokenizer.eot_id
        jobs = ((i, j) for i in range(len(encoded)) for j in range(sample.num_samples))
        while batch := list(itertools.islice(jobs, batch_size)):
            outs = [self.new_output(i, prompts[i], j, sample) for i, j in batch]
            gens = [self.output_generator(sample, prompts[i], j) for i, j in batch]
            t0, produced = time.perf_counter(), 0
            steps = self.steps([encoded[i] for i, _ in batch], sample, gens)
            for ids, lps in steps:
                for o, t, lp in zip(outs, ids, lps):
                    if o.finish_reason is None:
                        produced += 1
                        if piece := o.take(t, lp, eot):
                            yield Piece(o, piece)
                if all(o.finish_reason for o in outs):
                    steps.close()
                    break
            rate = produced / max(time.perf_counter() - t0, 1e-9)
            for o in outs:
                rest = o.close() if o.finish_reason is None else ""
                o.tokens_per_second = rate
                yield Piece(o, rest, final=True)

    def output_generator(self, cfg: SampleConfig, prompt: str, sample: int) -> torch.Generator:
        """The random generator output `sample` of `prompt` draws from: seeded from the
        run's seed, the prompt and the index alone (text.sample_seed)."""
        return torch.Generator(device=self.device).manual_seed(sample_seed(cfg.seed, prompt, sample))

    def new_output(self, i: int, prompt: str, sample: int, cfg: SampleConfig) -> Output:
        """An empty Output of prompt i (sample index `sample`), cut at cfg's stop strings."""
        return Output(i, prompt, sample, self.tokenizer.stream_decoder(), StopCutter(cfg.stop))

    # -- the Python API -------------------------------------------------------------

    def sample_config(self, settings: dict) -> SampleConfig:
        """A SampleConfig from keyword settings (SampleConfig's field names, plus
        greedy=True), checked as the CLI checks its flags; no seed: a random one."""
        settings = dict(settings)
        greedy = settings.pop("greedy", False)
        if not isinstance(greedy, bool):
            raise UsageError(f"greedy must be true or false, got {greedy!r}")
        known = [name for name in specs(SampleConfig) if name != "strategy"]  # the strategy is settled here
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}: use {', '.join(known)} or greedy")
        if isinstance(settings.get("stop"), str):
            settings["stop"] = (settings["stop"],)
        if settings.get("seed") is None:
            settings["seed"] = random_seed()
        sample = SampleConfig.settle(settings, greedy=greedy)
        for stop in sample.stop:
            check_text(stop, "a stop string")
        return sample

    def complete(self, prompts: str | list[str], batch_size: int = 8, **settings) -> list[Output]:
        """Every Output (text, token_ids, finish_reason, logprob, ...), in input order."""
        sample = self.sample_config(settings)
        return [p.output for p in self.outputs(_prompt_list(prompts), sample, batch_size) if p.final]

    def generate(self, prompt: str | list[str], **settings) -> str | list[str]:
        """The generated text; a list of texts for a list of prompts, or for one prompt
        with num_samples or num_return above 1."""
        texts = [o.text for o in self.complete(prompt, **settings)]
        return texts[0] if isinstance(prompt, str) and len(texts) == 1 else texts

    def stream(self, prompt: str, **settings) -> Iterator[str]:
        """The text of one output as it is produced: the pieces join to generate()'s text.
        The settings are checked here, before the first piece is asked for."""
        sample = self.sample_config(settings)
        if (sample.num_return if sample.strategy == "beam" else sample.num_samples) != 1:
            raise UsageError("stream() makes one output: use complete() for num_samples or num_return above 1")
        if not isinstance(prompt, str):
            raise UsageError(f"stream() takes one prompt, a string; got {type(prompt).__name__}")
        pieces = self.outputs([prompt], sample, batch_size=1)
        return (piece.text for piece in pieces if piece.text)

    def session(self, reverse_prompts: str | list[str] | tuple[str, ...] = (), **settings) -> Session:
        """A running text to continue turn after turn, its cache kept between turns
        (session.Session): `s.add("ROMEO:\n")`, then `"".join(s.reply())`."""
        if isinstance(reverse_prompts, str):
            reverse_prompts = (reverse_prompts,)
        return Session(self, self.sample_config(settings), tuple(reverse_prompts))

    def score(self, text: str, stride: int | None = None, batch_size: int = 8) -> Score:
        """How well the model predicts text, as `gptcli eval` scores a file holding it:
        .loss (nats per token), .bits_per_byte, .perplexity, .accuracy, .tokens. Scoring
        runs the model in float32 whatever the engine's dtype, as eval does."""
        EvalOptions(stride=stride, batch_size=batch_size).validate()
        if not isinstance(text, str):
            raise UsageError(f"score() takes text, a string; got {type(text).__name__}")
        stride = window_stride(stride, self.config.block_size)
        check_scoring(self.config, batch_size)
        ids = [self.tokenizer.eot_id, *self.tokenizer.encode(check_text(text, "the text"))]
        if len(ids) < 2:
            raise UsageError("the text is too short to score: it needs at least one token")
        return score_tokens(self.model, np.asarray(ids, dtype=np.int64), self.tokenizer.token_byte_lengths(),
                            stride=stride, batch_size=batch_size, precision=pick_precision("float32", self.device))


def _check_weights(dtype: str, arch, cfg, device: torch.device) -> None:
    """float16 and int8 weights: an architecture that has them, on the CPU (float16 also
    needs FBGEMM)."""
    if dtype == "float32":
        return
    if device.type != "cpu":
        raise UsageError(f"--dtype {dtype} runs on the CPU only, and this run would use {device.type}: "
                         "add --device cpu, or use --dtype float32")
    if dtype not in arch.weights:
        raise UsageError(f"--dtype {dtype} applies to GPT models; this run is a {cfg.arch.upper()} "
                         "(use --dtype float32)")
    if dtype == "float16" and not has_fp16_kernel():
        raise UsageError("--dtype float16 needs FBGEMM (an x86 CPU with AVX2), which this torch lacks: "
                         "use --dtype int8 or float32")


def _prompt_list(prompts) -> list[str]:
    """A prompt, or a list (or other sequence) of them, as a list of strings."""
    listed = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(listed, (list, tuple)):  # each prompt's own type is encode's to check
        raise UsageError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    return list(listed)


def _in_inference_mode(steps: Iterator) -> Iterator:
    """Run each step of a generator in inference mode, leaving the caller's code between
    steps outside it (a `with` around a yield would leak the mode into the caller)."""
    while True:
        with torch.inference_mode():
            try:
                item = next(steps)
            except StopIteration:
                return
        yield item


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
