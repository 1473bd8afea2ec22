"""`gptcli serve`: a run folder behind an OpenAI-compatible HTTP API (server/). Checks
the flags and the run folder before anything listens, binds the port, and hands over to
server/runner.py; returns the exit code. Starlette, uvicorn and prometheus_client come
with the `serve` extra, and their absence is one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import UsageError
from gptcli.store import checkpoint as ckpt

API_KEY_ENV = "GPTCLI_API_KEY"


@dataclass
class ServeRequest:
    run: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "float32"
    parallel: int = 16  # rows decoded together
    max_queue: int = 64  # outputs waiting beyond them; 429 past it
    api_key: str | None = None
    chat_template: Path | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body: int = 1 << 20  # bytes
    body_timeout: float = 10.0  # seconds for a request's body to arrive


def _check_stack() -> None:
    missing = []
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(f"gptcli serve needs {', '.join(missing)}: pip install 'gptcli[serve]'")


def run(req: ServeRequest, note) -> int:
    _check_stack()
    from gptcli.config import GenerateOptions
    from gptcli.server import protocol, runner
    from gptcli.server.app import Service

    if not 0 <= req.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {req.port}")
    if not 1 <= req.parallel <= 256:
        raise UsageError(f"--parallel must be between 1 and 256, got {req.parallel}")
    if not 0 <= req.max_queue <= 100_000:
        raise UsageError(f"--max-queue must be between 0 and 100000, got {req.max_queue}")
    GenerateOptions(device=req.device, dtype=req.dtype).validate()
    api_key = req.api_key if req.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and (not api_key.isprintable() or " " in api_key or not api_key):
        raise UsageError("--api-key must be printable text without spaces")
    template = protocol.load_template(req.chat_template)
    run_dir = ckpt.resolve_run(req.run, note)  # a missing run is refused before anything listens
    ckpt.model_config(ckpt.read_config(run_dir), run_dir)
    model_id = run_dir.name
    service = Service(model_id=model_id, parallel=req.parallel, max_queue=req.max_queue, template=template,
                      api_key=api_key, max_body=req.max_body, body_timeout=req.body_timeout)
    sock = runner.bind(req.host, req.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce = f"serving {run_dir} on http://{shown}:{port}" + (" (API key required)" if api_key else "")

    def make_engine():
        from gptcli.generation.engine import Generator

        return Generator(run_dir, device=req.device, dtype=req.dtype)

    return runner.serve(service, make_engine, sock, announce, req.cors_origins or None)
