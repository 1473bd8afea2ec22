"""The HTTP side of `serve`: a Starlette app whose endpoints turn OpenAI requests
(protocol.py) into rows of the continuous batch (generation/batcher.py) and the rows'
tokens back into JSON or Server-Sent Events. `Service` holds the engine once it is
loaded. Every refusal is a 4xx in OpenAI's error shape; nothing here prints a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import threading
import time
from collections.abc import AsyncIterator

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gptcli.errors import first_line
from gptcli.generation.batcher import Batcher, Done, QueueFull, Row, Token
from gptcli.generation.text import sample_seed
from gptcli.server import protocol
from gptcli.server.metrics import Metrics
from gptcli.server.protocol import ApiError, Plan
from gptcli.server.responses import Render, stream_events, whole


class Service:
    """What the endpoints share: the engine and its batcher once loaded (`ready`), the
    settings, and the metrics. `load` runs on a thread of its own while /health says 503."""

    def __init__(self, *, model_id: str, parallel: int, max_queue: int, template: dict, api_key: str | None,
                 max_body: int, body_timeout: float):
        self.model_id, self.parallel, self.max_queue, self.template = model_id, parallel, max_queue, template
        self.api_key, self.max_body, self.body_timeout = api_key, max_body, body_timeout
        self.engine = self.batcher = None
        self.state = "loading"  # then ready, or stopping
        self.metrics = Metrics(self)
        self.beam_lock = threading.Lock()  # one beam search at a time, beside the batch
        self.beams_waiting = 0

    def load(self, make_engine) -> None:
        engine = make_engine()
        engine.ready(engine.sample_config({"max_new_tokens": 1, "temperature": 0}), 1)
        if self.parallel > 1 and engine.prepared is not None:
            engine.decoder().warm_up(self.parallel)  # the packed matrices the batch steps with
        self.batcher = Batcher(engine, self.parallel, self.max_queue)
        self.batcher.start()
        self.engine = engine
        if self.state == "loading":
            self.state = "ready"
        else:  # stopped while it loaded
            self.batcher.stop()

    def stop(self) -> None:
        """Stop accepting work and end every stream with a final event (on a thread:
        this may be called from a signal handler)."""
        self.state = "stopping"
        if self.batcher is not None:
            threading.Thread(target=self.batcher.stop, daemon=True).start()


class Job:
    """One request's outputs: their rows in the batch (or a beam search), and the events
    they send, in arrival order, to the request's handler."""

    def __init__(self, service: Service, plan: Plan):
        self.service, self.plan, self.engine = service, plan, service.engine
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.rows: list[Row] = []
        self.generated = 0

    def start(self) -> None:
        plan, engine = self.plan, self.engine
        if plan.sample.max_new_tokens == 0:
            for i in range(len(plan.prompts) * plan.n):
                self.events.put_nowait((i, Done(self._output(i))))
            return
        if plan.sample.strategy == "beam":
            if self.service.beams_waiting >= self.service.max_queue:
                raise ApiError(429, "too many beam searches are waiting: try again later", code="queue_full")
            self.service.beams_waiting += 1
            threading.Thread(target=self._beams, daemon=True).start()
            return
        for i, ids in enumerate(plan.prompts):
            for j in range(plan.n):
                gen = None
                if plan.sample.strategy == "sample":
                    gen = torch.Generator(device=engine.device).manual_seed(
                        sample_seed(plan.sample.seed, plan.texts[i], j))
                index = i * plan.n + j
                self.rows.append(Row(ids, plan.sample, self._output(index), self._listener(index), gen,
                                     plan.logprobs or 0))
        try:
            self.service.batcher.submit(self.rows)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; try again later", code="queue_full") from None

    def _output(self, index: int):
        return self.engine.new_output(index // self.plan.n, self.plan.texts[index // self.plan.n],
                                      index % self.plan.n, self.plan.sample)

    def _listener(self, index: int):
        def listen(event) -> None:  # on the batcher's thread
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
            except RuntimeError:  # the event loop has closed: nobody is listening
                pass
        return listen

    def _beams(self) -> None:
        """Beam search on this thread, one at a time; each output comes whole."""
        with self.service.beam_lock:
            self.service.beams_waiting -= 1
            try:
                with torch.inference_mode():
                    pieces = list(self.engine.beam_outputs(self.plan.texts, self.plan.prompts, self.plan.sample))
                events = [(p.output.prompt_index * self.plan.n + p.output.sample,
                           Done(p.output, p.output.text)) for p in pieces]
            except Exception as e:
                events = [(i, Done(self._output(i), error=f"generation failed: {first_line(e)}", kind="failure"))
                          for i in range(len(self.plan.prompts) * self.plan.n)]
        for item in events:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()

    async def stream(self) -> AsyncIterator[tuple[int, Token | Done]]:
        """Every event until each output has its Done."""
        left = len(self.plan.prompts) * self.plan.n
        while left:
            index, event = await self.events.get()
            if isinstance(event, Token):
                self.generated += 1
                if self.first_token is None:
                    self.first_token = time.monotonic()
                    self.service.metrics.first_token(self.first_token - self.started)
            else:
                left -= 1
            yield index, event


async def respond(service: Service, request: Request, chat: bool) -> Response:
    """/v1/completions and /v1/chat/completions."""
    body = protocol.parse_body(await read_body(service, request))
    engine = ready(service)
    plan = (protocol.chat_plan(body, engine, service.model_id, service.template) if chat
            else protocol.completion_plan(body, engine, service.model_id))
    job = Job(service, plan)
    job.start()
    service.metrics.prompt_tokens(sum(len(p) for p in plan.prompts))
    render = Render(job, chat)
    if plan.stream:
        return StreamingResponse(stream_events(job, render), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await whole(job, render, request)



# -- the other endpoints ---------------------------------------------------------------


def ready(service: Service):
    if service.state != "ready":
        raise ApiError(503, "the model is still loading" if service.state == "loading" else "the server is stopping",
                       code=service.state)
    return service.engine


async def read_body(service: Service, request: Request) -> bytes:
    """The body, at most max_body bytes (413 beyond), within body_timeout seconds (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > service.max_body:
        raise ApiError(413, f"the body is {declared} bytes, more than the limit of {service.max_body}",
                       code="body_too_large")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > service.max_body:
                raise ApiError(413, f"the body is more than the limit of {service.max_body} bytes",
                               code="body_too_large")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), service.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the body did not arrive within {service.body_timeout:g} s", code="timeout") from None
    return b"".join(chunks)


async def tokenize(service: Service, request: Request) -> Response:
    body = protocol.parse_body(await read_body(service, request))
    engine = ready(service)
    content = body.get("content", body.get("prompt"))
    if not isinstance(content, str):
        raise ApiError(400, "content must be a string", "content")
    texts, _ = protocol.prompt_ids(content, engine, True, 0)
    return JSONResponse({"tokens": engine.tokenizer.encode(texts[0]), "model": service.model_id})


async def detokenize(service: Service, request: Request) -> Response:
    body = protocol.parse_body(await read_body(service, request))
    engine = ready(service)
    tokens = body.get("tokens")
    vocab = engine.config.vocab_size
    if not isinstance(tokens, list) or not all(protocol.is_token_id(t) and 0 <= t < vocab for t in tokens):
        raise ApiError(400, f"tokens must be a list of token ids between 0 and {vocab - 1}", "tokens")
    return JSONResponse({"content": engine.tokenizer.decode(tokens), "model": service.model_id})


def build_app(service: Service, cors_origins: list[str] | None = None) -> Starlette:
    def endpoint(handler, needs_key: bool = True):
        async def call(request: Request) -> Response:
            try:
                if needs_key:
                    authorize(service, request)
                return await handler(service, request)
            except ApiError as e:
                return JSONResponse(e.body(), status_code=e.status)
            except Exception as e:  # a defect: one line to the client and the log, never a traceback
                message = f"internal error: {first_line(e)}"
                print(f"gptcli serve: {message}", flush=True, file=sys.stderr)
                return JSONResponse(ApiError(500, message, kind="server_error").body(), status_code=500)
        return call

    async def health(service: Service, request: Request) -> Response:
        code = 200 if service.state == "ready" else 503
        return JSONResponse({"status": {"ready": "ok"}.get(service.state, service.state)}, status_code=code)

    async def models(service: Service, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": service.model_id, "object": "model",
                                                          "created": 0, "owned_by": "gptcli"}]})

    async def metrics(service: Service, request: Request) -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    async def completions(service: Service, request: Request) -> Response:
        return await respond(service, request, chat=False)

    async def chat(service: Service, request: Request) -> Response:
        return await respond(service, request, chat=True)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no endpoint {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code)

    routes = [Route("/health", endpoint(health, needs_key=False), methods=["GET"]),
              Route("/v1/models", endpoint(models), methods=["GET"]),
              Route("/metrics", endpoint(metrics), methods=["GET"]),
              Route("/v1/completions", endpoint(completions), methods=["POST"]),
              Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
              Route("/tokenize", endpoint(tokenize), methods=["POST"]),
              Route("/detokenize", endpoint(detokenize), methods=["POST"])]
    middleware = []
    if cors_origins:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})
    return service.metrics.wrap(app)


def authorize(service: Service, request: Request) -> None:
    """With an API key: `Authorization: Bearer KEY`, compared in constant time."""
    if service.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, key = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), service.api_key.encode()):
        raise ApiError(401, "a valid API key is needed: send Authorization: Bearer KEY", code="invalid_api_key")
