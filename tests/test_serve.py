"""`gptcli serve` as a user meets it: a separate process on a free loopback port, called
with the real `openai` client and with raw HTTP. Outputs are compared with the engine's
(what `gptcli generate` prints, tests/test_generate_cli.py) for the same settings.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the serve tests need the openai client (the dev extra)")
pytest.importorskip("uvicorn", reason="gptcli serve needs the serve extra")

from helpers import REPO  # noqa: E402

RUN = REPO / "gptcli" / "assets" / "default"
pytestmark = pytest.mark.slow


class Server:
    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "gptcli", "serve", "-c", str(RUN), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, cwd=REPO)
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"the server exited: {''.join(self.lines)}")
            self.lines.append(line)
            if m := re.match(r"serving .* on http://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                break
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def raw(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        out = r.status, r.read()
        conn.close()
        return out

    def metric(self, name: str) -> float:
        _, text = self.raw("GET", "/metrics")
        m = re.search(rf"^{name} (\S+)$", text.decode(), re.M)
        return float(m.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "8", "--max-queue", "64")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine():
    from gptcli.generation.engine import Generator

    return Generator(RUN)


def alone(engine, prompt: str, **settings):
    return engine.complete(prompt, **settings)[0]


def test_streamed_and_whole_text_equal_generate_for_the_same_seed(server, engine):
    client = server.client()
    whole = client.completions.create(model="default", prompt="ROMEO:", max_tokens=40, seed=7)
    chunks = list(client.completions.create(model="default", prompt="ROMEO:", max_tokens=40, seed=7, stream=True,
                                            stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    want = alone(engine, "ROMEO:", max_new_tokens=40, seed=7)
    assert whole.choices[0].text == streamed == want.text
    assert whole.choices[0].finish_reason == chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 40
    # and what the CLI prints
    cli = subprocess.run([sys.executable, "-m", "gptcli", "generate", "-c", str(RUN), "-p", "ROMEO:", "-n", "40",
                          "--seed", "7", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["text"] == streamed


def test_greedy_beam_and_n(server, engine):
    client = server.client()
    greedy = client.completions.create(model="default", prompt="JULIET:", max_tokens=30, temperature=0)
    assert greedy.choices[0].text == alone(engine, "JULIET:", max_new_tokens=30, greedy=True).text
    beams = client.completions.create(model="default", prompt="JULIET:", max_tokens=12, n=2,
                                      extra_body={"num_beams": 4})
    want = engine.complete("JULIET:", max_new_tokens=12, num_beams=4, num_return=2)
    assert [c.text for c in beams.choices] == [o.text for o in want]
    many = client.completions.create(model="default", prompt=["A", "B"], max_tokens=10, n=3, seed=3)
    assert len(many.choices) == 6 and [c.index for c in many.choices] == list(range(6))
    want = engine.complete(["A", "B"], max_new_tokens=10, num_samples=3, seed=3)
    assert [c.text for c in many.choices] == [o.text for o in want]


def test_chat_renders_the_template_and_streams_what_it_returns_whole(server, engine):
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Who is there?"}]
    client = server.client()
    whole = client.chat.completions.create(model="default", messages=messages, max_tokens=30, seed=4)
    chunks = list(client.chat.completions.create(model="default", messages=messages, max_tokens=30, seed=4,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    prompt = "A play.\n\nUser: Who is there?\nAssistant:"
    want = alone(engine, prompt, max_new_tokens=30, seed=4, stop="\nUser:")
    assert whole.choices[0].message.content == streamed == want.text
    assert whole.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")


def test_stop_strings_cut_across_pieces(server, engine):
    full = alone(engine, "KING:", max_new_tokens=40, greedy=True)
    ids = full.token_ids
    pieces = [engine.tokenizer.decode(ids[:k + 1]) for k in range(len(ids))]
    k = next(k for k in range(5, len(ids)) if len(pieces[k]) - len(pieces[k - 1]) >= 2)
    stop = pieces[k - 1][-1] + pieces[k][len(pieces[k - 1]):][:2]  # one character before a boundary, two after
    want = full.text[:full.text.index(stop)]
    for stream in (False, True):
        r = server.client().completions.create(model="default", prompt="KING:", max_tokens=40, temperature=0,
                                               stop=[stop], stream=stream)
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == want


def test_chinese_text_round_trips_and_streams_whole_characters(server):
    prompt = "你好，世界。天下"
    status, body = server.raw("POST", "/tokenize", {"content": prompt})
    tokens = json.loads(body)["tokens"]
    assert json.loads(server.raw("POST", "/detokenize", {"tokens": tokens})[1])["content"] == prompt
    chunks = list(server.client().completions.create(model="default", prompt=prompt, max_tokens=20, seed=1,
                                                     echo=True, stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert text.startswith(prompt) and "\ufffd" not in text


def test_sixteen_staggered_clients_get_what_each_gets_alone(server, engine):
    """Greedy and top_p=1 sampling (a nucleus edge can flip under batched float rounding:
    docs/serve.md) for 16 clients arriving at staggered times."""
    prompts = [f"{name}:\n" for name in ("ROMEO", "JULIET", "KING", "QUEEN")] * 4
    results: dict[int, str] = {}

    def call(i: int) -> None:
        time.sleep(0.03 * (i % 5))
        kw = {"temperature": 0} if i % 2 else {"seed": i, "top_p": 1.0}
        r = server.client().completions.create(model="default", prompt=prompts[i], max_tokens=20 + 5 * i,
                                               stream=bool(i % 3), **kw)
        results[i] = "".join(c.choices[0].text for c in r) if i % 3 else r.choices[0].text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(16):
        kw = {"greedy": True} if i % 2 else {"seed": i, "top_p": 1.0}
        assert results[i] == alone(engine, prompts[i], max_new_tokens=20 + 5 * i, **kw).text, i


def test_a_client_that_disconnects_stops_its_row(server):
    before = server.metric("gptcli_rows_cancelled_total")
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 250, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while b"data: " not in got:
        got += sock.recv(4096)
    sock.close()
    deadline = time.monotonic() + 5
    while server.metric("gptcli_rows_cancelled_total") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("gptcli_rows_cancelled_total") == before + 1
    assert server.metric("gptcli_running_rows") == 0
    assert server.metric("gptcli_generation_tokens_total") < 10**6


def test_edges_max_tokens_0_tiny_temperature_truncate_and_beam_usage(server, engine):
    client = server.client()
    r = client.completions.create(model="default", prompt="A", max_tokens=0, echo=True)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == ("A", "length", 0)
    tiny = client.completions.create(model="default", prompt="KING:", max_tokens=8, temperature=1e-300)
    assert tiny.choices[0].text == alone(engine, "KING:", max_new_tokens=8, greedy=True).text
    long = "word " * 400  # past the context: truncate keeps its last tokens, as generate does
    r = client.completions.create(model="default", prompt=long, max_tokens=5, temperature=0,
                                  extra_body={"truncate": True})
    assert r.choices[0].text == alone(engine, long, max_new_tokens=5, greedy=True).text
    beams = client.completions.create(model="default", prompt="A", max_tokens=6, extra_body={"num_beams": 2})
    assert beams.usage.completion_tokens == len(engine.tokenizer.encode(beams.choices[0].text)) > 0


def test_a_beam_search_whose_client_leaves_stops(server):
    before = server.metric("gptcli_generation_tokens_total")
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": "A", "max_tokens": 250, "num_beams": 16}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.3)
    sock.close()
    r = server.client().completions.create(model="default", prompt="B", max_tokens=3, extra_body={"num_beams": 2})
    assert r.choices[0].text  # it ran after the abandoned search, which produced nothing
    assert server.metric("gptcli_generation_tokens_total") - before <= 3


def test_bad_requests_get_a_400_in_openai_shape(server):
    client = server.client()
    bad = [dict(prompt="x", suffix="y"), dict(prompt="x", logit_bias={"1": 5}), dict(prompt="x", max_tokens="9"),
           dict(prompt="x", temperature=-1), dict(prompt="x", max_tokens=300), dict(prompt="x", n=0),
           dict(prompt="x", top_p=0.5, temperature=0), dict(prompt=[[99999]]), dict(prompt="x", best_of=3)]
    for fields in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="default", **fields)
        assert e.value.body["message"], fields
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    for raw in (b"{bad", b"[1, 2]", b'{"prompt": "x", "echo": 1}', b"\xff\xfe"):
        status, body = server.raw("POST", "/v1/completions", raw)
        assert status == 400 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, body = server.raw("POST", "/v1/completions", b"x" * (2 << 20))
    assert status == 413
    assert server.raw("GET", "/v1/completions")[0] == 405
    assert server.raw("POST", "/v1/completions/", {"prompt": "x"})[0] == 404
    assert server.raw("POST", "/tokenize", {"content": "x", "add_special": True})[0] == 400
    assert not any("Traceback" in line for line in server.lines)


def test_slow_and_idle_clients_do_not_stop_others(server):
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    t0 = time.monotonic()
    r = server.client().completions.create(model="default", prompt="A", max_tokens=5, temperature=0)
    assert r.choices[0].text and time.monotonic() - t0 < 5
    for s in idle + [slow]:
        s.close()


def test_api_key_queue_limit_and_graceful_shutdown():
    s = Server("--parallel", "1", "--max-queue", "1", env={"GPTCLI_API_KEY": "sekret"})
    try:
        assert s.raw("GET", "/health")[0] == 200  # no key needed
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert s.raw("GET", "/v1/models")[0] == 401
        client = s.client("sekret")
        assert client.models.list().data[0].id == "default"
        errors: list[Exception] = []

        def call() -> None:
            try:
                client.completions.create(model="default", prompt="A", max_tokens=200, temperature=0)
            except openai.RateLimitError as e:
                errors.append(e)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors, "one row running and one waiting: the others get 429"
        assert errors[0].response.headers["retry-after"] == "1"
        with pytest.raises(openai.BadRequestError, match="can never fit"):
            client.completions.create(model="default", prompt="A", max_tokens=2, n=3)
        # SIGTERM mid-stream: the stream ends with an error event and [DONE], exit 143
        stream = client.completions.create(model="default", prompt="A", max_tokens=250, stream=True, temperature=0)
        next(iter(stream))
        s.proc.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
    finally:
        code = s.stop()
    assert code == 143
    assert not any("Traceback" in line for line in s.lines)


def test_serve_refuses_bad_flags_in_one_line(tmp_path: Path):
    for args, message in ((["--port", "70000"], "--port"), (["-c", str(tmp_path)], "config.json"),
                          (["--chat-template", str(tmp_path / "none.json")], "--chat-template")):
        r = subprocess.run([sys.executable, "-m", "gptcli", "serve", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
