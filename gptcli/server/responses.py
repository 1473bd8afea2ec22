"""What `serve` sends back: the JSON of a completion or chat completion, whole or as
Server-Sent Events (a chunk per piece of text, a last chunk per output with its
finish_reason, the usage if asked, then [DONE]; an error ends a stream with an error
event and [DONE]). Reads a Job's events (app.py); a client that leaves cancels its rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gptcli.generation.batcher import Token
from gptcli.server.protocol import ApiError
from gptcli.store.readers import dumps

if TYPE_CHECKING:
    from gptcli.server.app import Job


class Render:
    """The JSON of one request's responses and chunks, completions or chat."""

    def __init__(self, job: Job, chat: bool):
        self.job, self.chat = job, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.tokenizer = job.engine.tokenizer

    def head(self, stream: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if stream and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.job.service.model_id}

    def logprobs(self, tokens: list[Token], offset: int) -> dict | None:
        if self.job.plan.logprobs is None:
            return None
        text = self.tokenizer.decode
        if self.chat:
            return {"content": [{"token": text([t.id]), "logprob": t.logprob, "bytes": list(text([t.id]).encode()),
                                 "top_logprobs": [{"token": text([i]), "logprob": lp, "bytes": list(text([i]).encode())}
                                                  for i, lp in t.top]} for t in tokens]}
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t.text)
        return {"tokens": [text([t.id]) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{text([i]): lp for i, lp in t.top} for t in tokens] if self.job.plan.logprobs
                else None, "text_offset": offsets}

    def choice(self, index: int, text: str, tokens: list[Token], finish: str | None, stream: bool,
               first: bool = False, offset: int = 0) -> dict:
        reason = None if finish is None else ("length" if finish == "length" else "stop")
        if not self.chat:
            return {"index": index, "text": text, "logprobs": self.logprobs(tokens, offset), "finish_reason": reason}
        if stream:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": self.logprobs(tokens, offset), "finish_reason": reason}
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": self.logprobs(tokens, offset), "finish_reason": reason}

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.job.plan.prompts)
        generated = self.job.completion_tokens()
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


async def whole(job: Job, render: Render, request: Request) -> Response:
    """The non-streamed response, once every output is done; a client that leaves first
    cancels its rows."""
    n = len(job.plan.prompts) * job.plan.n
    texts = [job.plan.texts[i // job.plan.n] if job.plan.echo else "" for i in range(n)]
    tokens: list[list[Token]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async for index, event in _until(job.stream(), gone):
            if isinstance(event, Token):
                texts[index] += event.text
                tokens[index].append(event)
            elif event.error:
                raise ApiError(503 if event.kind == "shutdown" else 500, event.error,
                               kind="server_error", code=event.kind)
            else:
                texts[index] += event.text
                finish[index] = event.output.finish_reason
    finally:
        gone.cancel()
        job.cancel()
    job.service.metrics.done(time.monotonic() - job.started)
    offset = [len(job.plan.texts[i // job.plan.n]) if job.plan.echo else 0 for i in range(n)]
    choices = [render.choice(i, texts[i], tokens[i], finish[i], False, offset=offset[i]) for i in range(n)]
    return JSONResponse({**render.head(False), "choices": choices, "usage": render.usage()})


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until(events: AsyncIterator, gone: asyncio.Future) -> AsyncIterator:
    """events, until `gone` completes (the client left: stop)."""
    while True:
        nxt = asyncio.ensure_future(events.__anext__())
        await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not nxt.done():
            nxt.cancel()
            return
        try:
            yield nxt.result()
        except StopAsyncIteration:
            return


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else dumps(data)}\n\n"


async def stream_events(job: Job, render: Render) -> AsyncIterator[str]:
    """Server-Sent Events: one chunk per piece of text, a last one per output with its
    finish_reason, the usage if asked, then [DONE]. An error ends the stream with an
    error event and [DONE]."""
    plan = job.plan
    n = len(plan.prompts) * plan.n
    started, offset = [False] * n, [0] * n
    try:
        if plan.echo:
            for i in range(n):
                offset[i] = len(plan.texts[i // plan.n])
                yield sse({**render.head(True), "choices": [render.choice(i, plan.texts[i // plan.n], [], None, True)]})
        async for index, event in job.stream():
            first, started[index] = not started[index], True
            if isinstance(event, Token):
                if event.text or plan.logprobs is not None or first:
                    yield sse({**render.head(True), "choices": [
                        render.choice(index, event.text, [event], None, True, first, offset[index])]})
                offset[index] += len(event.text)
            elif event.error:
                yield sse(ApiError(503 if event.kind == "shutdown" else 500, event.error, kind="server_error",
                                   code=event.kind).body())
                break
            else:
                yield sse({**render.head(True), "choices": [
                    render.choice(index, event.text, [], event.output.finish_reason, True, first, offset[index])]})
        else:
            if plan.include_usage:
                yield sse({**render.head(True), "choices": [], "usage": render.usage()})
        yield sse("[DONE]")
    finally:
        job.cancel()
        job.service.metrics.done(time.monotonic() - job.started)
