"""gptcli: train a small GPT on your own text and generate from it, from the command line
or from Python:

    import gptcli
    g = gptcli.load("checkpoints/run", dtype="float16")
    g.generate("ROMEO:", max_new_tokens=50, temperature=0.8, seed=1)
    for piece in g.stream("ROMEO:"): ...
    g.score(text).bits_per_byte

Importing gptcli loads nothing heavy; `load` brings in torch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(run=None, *, device: str = "auto", dtype: str = "float32", threads: int | None = None):
    """A run folder loaded for generation and scoring: a generation.engine.Generator.

    run: the run folder (None: the newest under ./checkpoints/, else the shipped model);
    device: auto, cpu, cuda or mps; dtype: the weights while decoding (float32, float16
    or int8, as --dtype); threads: torch's CPU threads for the process, as --threads sets
    them (None: leave the process's setting alone). Errors are gptcli.errors.UsageError
    (bad input) and RunError, with the CLI's messages."""
    if threads is not None:
        from gptcli import threads as cpu_threads

        cpu_threads.use(threads)
    from gptcli.generation.engine import Generator

    return Generator(run, device=device, dtype=dtype)
