"""`gptcli generate`: pick the model, settle the decoding strategy from the flags given,
run the decoding loops, and turn ids into text (streamed without splitting a UTF-8
character, cut before stop strings) and into records (text or JSON lines).

The loops are decoding.py's; this module owns prompts, outputs and their order. It
writes the product to the sink cli.py hands in (any object with write, flush and
isatty, such as sys.stdout) and nothing else.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from gptcli import checkpoint as ckpt
from gptcli.budget import check_generation
from gptcli.config import ModelConfig, SampleConfig
from gptcli.console import Console
from gptcli.decoders import REDUCED, has_fp16_kernel, prepare
from gptcli.decoding import beam_search, decode_steps
from gptcli.device import pick_device
from gptcli.errors import Setting as S
from gptcli.errors import SettingError, UsageError
from gptcli.tokenizer import BPETokenizer, StreamDecoder


class Sink(Protocol):
    """Where the product goes: sys.stdout in the CLI, a recorder in tests."""

    def write(self, text: str) -> object: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def sample_config(given: dict, greedy: bool = False) -> SampleConfig:
    """The strategy the user's settings ask for, refusing contradictions instead of
    silently ignoring a setting. `given` holds only the SampleConfig fields that were set."""
    given = dict(given)
    beams = given.get("num_beams", 1)
    greedy = greedy or given.get("temperature") == 0
    sampling = [f for f in ("temperature", "top_k", "top_p", "num_samples") if f in given]
    beam_only = [f for f in ("length_penalty", "early_stopping", "num_return") if f in given]
    if beams > 1:
        if greedy or sampling:
            culprit = "greedy" if greedy and "temperature" not in given else sampling[0]
            raise SettingError(S("num_beams"), f" {beams} searches, it does not sample: drop ", S(culprit))
        strategy = "beam"
    else:
        if beam_only:
            raise SettingError(S(beam_only[0]), " only applies to beam search: add ", S("num_beams"), " N (N > 1)")
        if greedy:
            extra = [f for f in sampling if f != "temperature" and not (f == "num_samples" and given[f] == 1)]
            if extra or ("temperature" in given and given["temperature"] != 0):
                raise SettingError("greedy decoding takes the most likely token: ",
                                   S(extra[0] if extra else "temperature"), " does not apply")
            given.pop("temperature", None)
            strategy = "greedy"
        else:
            strategy = "sample"
            if "top_k" in given and "top_p" not in given:
                given["top_p"] = None  # an explicit --top-k replaces the default nucleus
    return SampleConfig(strategy=strategy, **given).validate()

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


@dataclass
class GenerateRequest:
    checkpoint: Path | None  # None: the newest run, else the shipped model
    prompts: list[str]
    sample: SampleConfig
    batch_size: int = 8  # outputs generated together
    stream: bool = True  # write text as it is produced (single output only)
    json_lines: bool = False
    device: str = "auto"
    dtype: str = "float32"  # the weights while decoding: float32, float16 or int8 (decoders.WEIGHTS)
    keep: bool = False  # keep every output in the result (the sink has them anyway; memory grows with the count)


@dataclass
class GenerateResult:
    """What was generated; the sink already holds it as text or JSON lines."""

    sample: SampleConfig
    count: int = 0  # outputs written to the sink
    outputs: list[Output] = field(default_factory=list)  # with GenerateRequest.keep

    def add(self, o: Output, keep: bool) -> None:
        self.count += 1
        if keep:
            self.outputs.append(o)

    def to_json(self) -> list[dict]:
        return [o.record(self.sample) for o in self.outputs]

    def to_text(self) -> str:
        return "".join(o.text for o in self.outputs)


def escape_line(text: str) -> str:
    """One output per line: backslash, newline and CR are escaped (use --json for exact text)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def run(req: GenerateRequest, out: Sink, console: Console) -> GenerateResult:
    """Generate every output of the request, writing the product to `out` in input order."""
    run_dir = ckpt.resolve_run(req.checkpoint, console.info)
    cfg = ckpt.model_config(ckpt.read_config(run_dir), run_dir)
    beams = req.sample.num_beams if req.sample.strategy == "beam" else 1
    rows = beams if beams > 1 else min(req.batch_size, len(req.prompts) * req.sample.num_samples)
    check_generation(cfg, rows, req.sample.max_new_tokens, beams)
    device = pick_device(req.device)
    if req.dtype in REDUCED:
        check_reduced(req.dtype, cfg, device)
    model, tok, _ = ckpt.load_run(run_dir, device)
    prepare(model, req.dtype, rows)
    block = model.config.block_size
    encoded = []
    for i, text in enumerate(req.prompts):
        ids = tok.encode_tail(text, block + 1) or [tok.eot_id]  # an empty prompt starts a new document
        if len(ids) > block:
            console.warn(f"prompt {i + 1} is longer than the model's context: keeping its last {block} tokens")
            ids = ids[-block:]
        encoded.append(ids)
    result = GenerateResult(req.sample)
    with torch.inference_mode():
        run_outputs = _beam_outputs if req.sample.strategy == "beam" else _sampled_outputs
        run_outputs(model, tok, encoded, req, out, result)
    out.flush()
    return result


def check_reduced(dtype: str, cfg: ModelConfig, device: torch.device) -> None:
    """float16 and int8 weights: a GPT on the CPU (float16 also needs FBGEMM)."""
    if device.type != "cpu":
        raise UsageError(f"--dtype {dtype} runs on the CPU only, and this run would use {device.type}: "
                         "add --device cpu, or use --dtype float32")
    if cfg.recurrent:
        raise UsageError(f"--dtype {dtype} applies to GPT models; this run is a {cfg.arch.upper()} "
                         "(use --dtype float32)")
    if dtype == "float16" and not has_fp16_kernel():
        raise UsageError("--dtype float16 needs FBGEMM (an x86 CPU with AVX2), which this torch lacks: "
                         "use --dtype int8 or float32")


def _is_single(req: GenerateRequest) -> bool:
    cfg = req.sample
    return len(req.prompts) * (cfg.num_return if cfg.strategy == "beam" else cfg.num_samples) == 1


def _beam_outputs(model, tok: BPETokenizer, encoded: list[list[int]], req: GenerateRequest, out: Sink,
                  result: GenerateResult) -> None:
    """Beam search, one prompt at a time; results print when each search ends."""
    for i, ids in enumerate(encoded):
        t0 = time.perf_counter()
        hyps = beam_search(model, ids, req.sample, tok.eot_id, req.dtype)
        rate = sum(len(h.tokens) for h in hyps) / max(time.perf_counter() - t0, 1e-9)
        for rank, h in enumerate(hyps):
            o = _new_output(i, req.prompts[i], rank, tok, req.sample)
            for t in h.tokens:
                if o.finish_reason:
                    break
                o.take(t, 0.0, tok.eot_id)
            if not o.finish_reason:
                o.close()
            o.logprob, o.score, o.tokens_per_second = h.logprob, h.score, rate
            result.add(o, req.keep)
            _emit(o, out, req, streamed=False)


def _sampled_outputs(model, tok: BPETokenizer, encoded: list[list[int]], req: GenerateRequest, out: Sink,
                     result: GenerateResult) -> None:
    """Greedy or sampled outputs, `batch_size` at a time; a single output streams."""
    cfg, device = req.sample, model.wte.weight.device
    streaming = _is_single(req) and req.stream and not req.json_lines
    jobs = ((i, j) for i in range(len(encoded)) for j in range(cfg.num_samples))
    while batch := list(itertools.islice(jobs, req.batch_size)):
        outs = [_new_output(i, req.prompts[i], j, tok, cfg) for i, j in batch]
        gens = [torch.Generator(device=device).manual_seed(sample_seed(cfg.seed, req.prompts[i], j)) for i, j in batch]
        t0, produced = time.perf_counter(), 0
        steps = decode_steps(model, [encoded[i] for i, _ in batch], cfg, tok.eot_id, gens, req.dtype)
        for ids, lps in steps:
            for o, t, lp in zip(outs, ids, lps):
                if o.finish_reason is None:
                    produced += 1
                    piece = o.take(t, lp, tok.eot_id)
                    if streaming and piece:
                        out.write(piece)
                        out.flush()
            if all(o.finish_reason for o in outs):
                steps.close()
                break
        rate = produced / max(time.perf_counter() - t0, 1e-9)
        for o in outs:
            if o.finish_reason is None:
                rest = o.close()
                if streaming and rest:
                    out.write(rest)
            o.tokens_per_second = rate
            result.add(o, req.keep)
            _emit(o, out, req, streamed=streaming)


def _new_output(i: int, prompt: str, sample: int, tok: BPETokenizer, cfg: SampleConfig) -> Output:
    return Output(i, prompt, sample, tok.stream_decoder(), StopCutter(cfg.stop))


def _emit(o: Output, out: Sink, req: GenerateRequest, streamed: bool) -> None:
    if req.json_lines:
        out.write(json.dumps(o.record(req.sample), ensure_ascii=False) + "\n")
    elif _is_single(req):
        if not streamed:
            out.write(o.text)
        if out.isatty():  # end the line on a terminal; pipes get the exact text
            out.write("\n")
    else:
        out.write(escape_line(o.text) + "\n")
    out.flush()


def strategy_fields(cfg: SampleConfig) -> dict:
    common = {"strategy": cfg.strategy, "max_new_tokens": cfg.max_new_tokens, "stop": list(cfg.stop),
              "repetition_penalty": cfg.repetition_penalty}
    if cfg.strategy == "sample":
        return {**common, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
    if cfg.strategy == "beam":
        return {**common, "beams": cfg.num_beams, "length_penalty": cfg.length_penalty,
                "early_stopping": cfg.early_stopping, "num_return": cfg.num_return}
    return common


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
