"""`gptcli serve` under load, against llama.cpp's own server (llama-server) on the same
weights, in one run.

A closed loop of K concurrent streaming clients (K = 1, 4, 16, 64 by default), each
sending completions of --new tokens from varied prompts (lines of the held-out text)
for --seconds, one request after another. Reported per server and K: aggregate
generated tokens/s (completion tokens over the wall time), p50 and p95 time to first
token, p50 time between tokens (between streamed chunks), and gptcli's ratio to
llama-server. Each (server, K) cell runs --repeats times, alternating the servers;
figures are medians. Both servers get the same threads, the same number of parallel
rows (--parallel; llama-server's slots, each with block_size of context) and sampling
(temperature 0.8, top_p 0.95). A request's tokens are its usage's completion_tokens.

llama-server is built once by benchmarks/setup_llama_server.sh; without it (or with
--no-llama) only gptcli is measured. The clients share one event loop in this process,
speaking HTTP through h11 (uvicorn's own HTTP/1.1 library).

    bash benchmarks/setup_llama_server.sh && python benchmarks/serve.py
    python benchmarks/serve.py --clients 16 --seconds 30 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import h11

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"
DEFAULT_RUN = REPO / "gptcli" / "assets" / "default"
LLAMA_SERVER = Path(os.environ.get("GPTCLI_LLAMA_SERVER_DIR", Path.home() / ".cache/gptcli-bench/llama_server"))


def prompts(n: int = 256) -> list[str]:
    text = CORPUS.read_text(encoding="utf-8")
    lines = [line for line in text[int(len(text) * 0.9):].splitlines() if len(line) > 20]
    return [lines[(i * 37) % len(lines)] for i in range(n)]


class Process:
    """A server process on a free port, ready when /health says 200."""

    def __init__(self, argv: list[str], port: int | None = None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if port is None:  # gptcli serve --port 0 says which port it got
            for line in self.proc.stderr:
                if m := re.search(r"on http://127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
                    break
            else:
                raise SystemExit(f"the server did not start: {argv}")
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet, or 503 while loading
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not become healthy: {argv}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def stream_completion(host: str, port: int, body: dict) -> AsyncIterator[tuple[float, dict]]:
    """POST /v1/completions with stream: each SSE event's arrival time and JSON. HTTP is
    h11's (sans-IO) over an asyncio connection: httpx's async client, tried first, added
    up to 70 ms a chunk against llama-server's chunked responses, which measured the
    client instead of the server."""
    reader, writer = await asyncio.open_connection(host, port)
    conn = h11.Connection(h11.CLIENT)
    data = json.dumps(body).encode()
    writer.write(conn.send(h11.Request(method="POST", target="/v1/completions", headers=[
        ("Host", host), ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])))
    writer.write(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    pending = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"status {event.status_code}")
            elif isinstance(event, h11.Data):
                pending += bytes(event.data)
                *events, pending = pending.split(b"\n\n")
                now = time.monotonic()
                for e in events:
                    line = e.strip()
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        yield now, json.loads(line[6:])
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
    finally:
        writer.close()


async def one_client(url: str, texts: list[str], start: int, new: int, until: float, out: dict) -> None:
    host, port = url.removeprefix("http://").split(":")
    i = start
    while time.monotonic() < until:
        body = {"model": out["model"], "prompt": texts[i % len(texts)], "max_tokens": new, "stream": True,
                "temperature": 0.8, "top_p": 0.95, "seed": i, "stream_options": {"include_usage": True}}
        i += 7
        sent, first, last, tokens = time.monotonic(), None, None, 0
        try:
            async for now, chunk in stream_completion(host, int(port), body):
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    if first is None:
                        first = now
                        out["ttft"].append(now - sent)
                    elif last is not None:
                        out["gaps"].append(now - last)
                    last = now
        except (OSError, RuntimeError):
            out["errors"] += 1
            continue
        out["tokens"] += tokens
        out["requests"] += 1


async def load(url: str, model: str, clients: int, seconds: float, new: int) -> dict:
    texts = prompts()
    out = {"model": model, "ttft": [], "gaps": [], "tokens": 0, "requests": 0, "errors": 0}
    t0 = time.monotonic()
    until = t0 + seconds
    await asyncio.gather(*(one_client(url, texts, k, new, until, out) for k in range(clients)))
    wall = time.monotonic() - t0
    q = statistics.quantiles
    return {"tokens_per_s": out["tokens"] / wall, "requests": out["requests"], "errors": out["errors"],
            "ttft_p50": statistics.median(out["ttft"]) if out["ttft"] else None,
            "ttft_p95": q(out["ttft"], n=20)[18] if len(out["ttft"]) >= 2 else None,
            "itl_p50": statistics.median(out["gaps"]) if out["gaps"] else None}


def gguf_of(run: Path, folder: Path) -> Path:
    path = folder / "model-f32.gguf"
    if path.exists():
        return path
    subprocess.run([sys.executable, "-m", "gptcli", "export-gguf", str(run), str(path)], check=True,
                   capture_output=True)
    return path


def start(kind: str, args, folder: Path) -> tuple[Process, str]:
    if kind == "gptcli":
        argv = [sys.executable, "-m", "gptcli", "serve", "-c", str(args.run), "--port", "0", "--parallel",
                str(args.parallel), "--max-queue", "1024", "--threads", str(args.threads)]
        return Process(argv), args.run.name
    block = json.loads((args.run / "config.json").read_text())["model"]["block_size"]
    port = 18000 + os.getpid() % 1000
    argv = [str(LLAMA_SERVER / "build/bin/llama-server"), "-m", str(gguf_of(args.run, folder)), "--port", str(port),
            "-np", str(args.parallel), "-c", str(block * args.parallel), "-t", str(args.threads), "-tb",
            str(args.threads), "--cont-batching", "--log-disable"]
    return Process(argv, port), "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=15.0, help="per cell")
    ap.add_argument("--new", type=int, default=128, help="max_tokens per request")
    ap.add_argument("--parallel", type=int, default=16, help="rows decoded together (both servers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    kinds = ["gptcli"]
    if not args.no_llama:
        if (LLAMA_SERVER / "build/bin/llama-server").exists():
            kinds.append("llama-server")
        else:
            print("llama-server is not built (bash benchmarks/setup_llama_server.sh): gptcli only", file=sys.stderr)
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                server, model = start(kind, args, Path(tmp))
                try:
                    asyncio.run(load(server.url, model, 2, 3, args.new))  # warm up
                    for k in args.clients:
                        r = asyncio.run(load(server.url, model, k, args.seconds, args.new))
                        results.setdefault((kind, k), []).append(r)
                        print(f"  {kind} K={k} run {rep + 1}: {r['tokens_per_s']:.0f} tok/s", file=sys.stderr)
                finally:
                    server.close()
    report(results, kinds, args)


def report(results: dict, kinds: list[str], args) -> None:
    def med(kind, k, key):
        values = [r[key] for r in results[(kind, k)] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    print(f"{'server':14} {'K':>3} {'tok/s':>8} {'x K=1':>6} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} "
          f"{'errors':>6}")
    rows = []
    for kind in kinds:
        base = med(kind, args.clients[0], "tokens_per_s")
        for k in args.clients:
            row = {"server": kind, "clients": k, **{key: med(kind, k, key) for key in
                                                      ("tokens_per_s", "ttft_p50", "ttft_p95", "itl_p50")},
                   "errors": sum(r["errors"] for r in results[(kind, k)])}
            rows.append(row)
            print(f"{kind:14} {k:>3} {row['tokens_per_s']:>8.0f} {row['tokens_per_s'] / base:>6.2f} "
                  f"{row['ttft_p50'] * 1000:>7.0f}ms {row['ttft_p95'] * 1000:>7.0f}ms {row['itl_p50'] * 1000:>6.1f}ms "
                  f"{row['errors']:>6}")
    if "llama-server" in kinds:
        print("gptcli / llama-server, aggregate tokens/s: " + ", ".join(
            f"K={k} {med('gptcli', k, 'tokens_per_s') / med('llama-server', k, 'tokens_per_s'):.2f}x"
            for k in args.clients))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
