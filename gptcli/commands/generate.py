"""`gptcli generate`: read the prompts, settle the sampling from the flags given, run
the generation engine (generation/engine.py), and write what it yields as text (a
single output streams as it comes) or as JSON lines, in input order.

Wiring only: the engine owns the model, the decoding and the text. This module writes
the product to the sink cli/app.py hands in (any object with write, flush and isatty, such
as sys.stdout) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gptcli.commands.inputs import prompt_text, read_prompts
from gptcli.config import GenerateOptions, SampleConfig
from gptcli.console import Console
from gptcli.errors import UsageError
from gptcli.generation.engine import Generator, random_seed
from gptcli.generation.text import Output
from gptcli.settings import pick
from gptcli.store.readers import dumps
from gptcli.tokenizer import check_text


class Sink(Protocol):
    """Where the product goes: sys.stdout in the CLI, a recorder in tests."""

    def write(self, text: str) -> object: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


@dataclass
class GenerateRequest:
    checkpoint: Path | None  # None: the newest run, else the shipped model
    prompts: list[str]
    sample: SampleConfig
    batch_size: int = 8  # outputs generated together
    stream: bool = True  # write text as it is produced (single output only)
    json_lines: bool = False
    device: str = "auto"
    dtype: str = "float32"  # the weights while decoding: float32, float16 or int8 (kernels.WEIGHTS)
    keep: bool = False  # keep every output in the result (the sink has them anyway; memory grows with the count)
    interactive: bool = False  # a session at the terminal (commands/interactive.py); prompts: the first text
    reverse_prompts: tuple[str, ...] = ()  # interactive: texts that hand control back


def request(checkpoint: Path | None, prompt: str | None, prompts_file: str | None, greedy: bool, stream: bool,
            json_lines: bool, settings: dict) -> GenerateRequest:
    """The request the flags make: prompts from --prompts, --prompt, or piped stdin;
    a random seed unless --seed; every stop string checked."""
    if prompt is not None and prompts_file is not None:
        raise UsageError("--prompt and --prompts are exclusive: give one")
    sample = SampleConfig.settle({"seed": random_seed(), **pick(SampleConfig, settings)}, greedy=greedy)
    options = GenerateOptions(**pick(GenerateOptions, settings)).validate()
    if options.reverse_prompt and not options.interactive:
        raise UsageError("--reverse-prompt applies to --interactive sessions: for one output, use --stop")
    if options.interactive:
        if prompts_file is not None or json_lines or not stream or prompt == "-":
            raise UsageError("--interactive reads your lines from stdin and streams its replies: it takes no "
                             "--prompts, --json, --no-stream or --prompt -")
        texts = [check_text(prompt, "--prompt") if prompt is not None else ""]
    else:
        texts = read_prompts(prompts_file) if prompts_file is not None else [prompt_text(prompt)]
    for stop in sample.stop:
        check_text(stop, "--stop")
    return GenerateRequest(checkpoint=checkpoint, prompts=texts, sample=sample, batch_size=options.batch_size,
                           stream=stream, json_lines=json_lines, device=options.device, dtype=options.dtype,
                           interactive=options.interactive, reverse_prompts=options.reverse_prompt)


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
    engine = Generator(req.checkpoint, device=req.device, dtype=req.dtype, note=console.info)
    if req.interactive:
        from gptcli.commands import interactive

        interactive.run(engine, req, out, console)
        return GenerateResult(req.sample)
    cfg = req.sample
    single = len(req.prompts) * (cfg.num_return if cfg.strategy == "beam" else cfg.num_samples) == 1
    streaming = single and req.stream and not req.json_lines and cfg.strategy != "beam"
    result = GenerateResult(cfg)
    for piece in engine.outputs(req.prompts, cfg, req.batch_size, warn=console.warn):
        if streaming and piece.text:
            out.write(piece.text)
            out.flush()
        if piece.final:
            result.add(piece.output, req.keep)
            _emit(piece.output, out, req, single, streamed=streaming)
    out.flush()
    return result


def _emit(o: Output, out: Sink, req: GenerateRequest, single: bool, streamed: bool) -> None:
    if req.json_lines:
        out.write(dumps(o.record(req.sample)) + "\n")
    elif single:
        if not streamed:
            out.write(o.text)
        if out.isatty():  # end the line on a terminal; pipes get the exact text
            out.write("\n")
    else:
        out.write(escape_line(o.text) + "\n")
    out.flush()
