"""uvicorn, run the way `serve` needs: on a socket bound beforehand (so a port in use is
one line, and port 0 reports the port it got), with the model loaded on a thread while
/health says 503, a deadline for a request's headers (uvicorn has none: a client that
sends them a byte at a time would hold its connection open), and Ctrl-C or SIGTERM
ending every stream with a final event before the process exits 130 or 143.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gptcli.errors import RunError, UsageError, first_line
from gptcli.server.app import Service, build_app

HEADER_TIMEOUT = 10.0  # seconds a connection may take to send a request's headers
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
MAX_HEADER_BYTES = 64 * 1024


class _H11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers have not
    all arrived within HEADER_TIMEOUT (slowloris, or a connection opened and left idle)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._late)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:  # a new request starts
            self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._late)
        super().data_received(data)
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:  # its headers are in
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _late(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server with gptcli's signals: the first Ctrl-C or SIGTERM stops the
    batch (every stream gets its final event) and then the server; a second one forces
    the exit. The signal is remembered for the exit code (uvicorn would re-raise it)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]):
        super().__init__(config)
        self.on_stop, self.signal = on_stop, None

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.signal(sig, self._caught) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def _caught(self, sig, frame) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        self.signal = sig
        self.on_stop()
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--host {host}: not an address this machine has ({e})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(service: Service, make_engine: Callable, sock: socket.socket, announce: str,
          cors_origins: list[str] | None) -> int:
    """Serve until stopped; the exit code (130 or 143 after a signal, 1 or 2 when the
    model failed to load)."""
    config = uvicorn.Config(build_app(service, cors_origins), http=_H11, lifespan="off", log_level="warning",
                            access_log=False, timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=30,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES, server_header=False)
    server = _Server(config, service.stop)
    failure: list[int] = []

    def load() -> None:
        try:
            service.load(make_engine)
        except Exception as e:
            print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
            failure.append(2 if isinstance(e, UsageError) else 1)
            server.should_exit = True
            return
        if service.state == "ready":
            print(announce, file=sys.stderr, flush=True)

    threading.Thread(target=load, name="gptcli-load", daemon=True).start()
    asyncio.run(server.serve(sockets=[sock]))
    if service.batcher is not None:
        service.batcher.stop()
    if failure:
        return failure[0]
    return 128 + server.signal if server.signal else 0
