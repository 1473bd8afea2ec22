"""A process that has imported gptcli (and torch) once and forks a fresh child per case.

Each child is gptcli as a process of its own: its own working folder, environment,
standard streams (files, pipes, closed, /dev/full), memory cap (RLIMIT_AS) and signals,
running gptcli's real entry point. Starting Python and importing torch costs more than
most hostile cases; forking from a parent that never ran a torch operation costs a few
milliseconds. Protocol: one JSON case per line on stdin, one JSON result per line on
stdout. Run only by harness.py.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback


def child(case: dict) -> None:
    """In the forked child: set up the process as a shell would have, then run gptcli."""
    os.setsid()
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    cap = case["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for fd, spec in ((0, case["stdin"]), (1, case["stdout"]), (2, case["stderr"])):
        if spec is None:
            os.close(fd)
            continue
        if isinstance(spec, int):  # a pipe the parent opened
            os.dup2(spec, fd)
            continue
        path, mode = spec
        flags = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[mode]
        new = os.open(path, flags, 0o644)
        os.dup2(new, fd)
        os.close(new)
    if case.get("umask") is not None:
        os.umask(case["umask"])
    if case.get("unprivileged") and os.geteuid() == 0:
        drop_permission_override()
    encoding = case.get("encoding", "utf-8")
    sys.stdin = open(0, encoding=encoding, closefd=False) if case["stdin"] is not None else None
    sys.stdout = open(1, "w", encoding=encoding, closefd=False) if case["stdout"] is not None else None
    sys.stderr = open(2, "w", encoding=encoding, closefd=False) if case["stderr"] is not None else None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as CPython sets it at start
    sys.argv = ["gptcli", *case["args"]]
    from gptcli.cli.app import main

    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        if sys.stderr is not None:
            traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(code)


def drop_permission_override() -> None:
    """Clear CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER: root then meets file
    permissions as any user does (a read-only folder stays read-only), still owning
    the files it owns. capset(2) through libc, as Python has no call for it."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & keep)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def run(case: dict) -> dict:
    """Fork the case's child and wait for it, with its timeout. `stdout: ["|head", N]`
    gives it a pipe whose reader leaves after N bytes, as `| head -c N` does."""
    head = None
    if isinstance(case["stdout"], list) and case["stdout"][0] == "|head":
        head, wanted, taken = os.pipe(), case["stdout"][1], b""
        case = {**case, "stdout": head[1]}
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            if head:
                os.close(head[0])
            child(case)
        finally:
            os._exit(70)
    if head:
        os.close(head[1])
        os.set_blocking(head[0], False)
    deadline = t0 + case["timeout"]
    signal_at = t0 + case["signal_after"] if case.get("signal_after") is not None else None
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if head and head[0] is not None:
            try:
                taken += os.read(head[0], wanted - len(taken)) or b""
            except BlockingIOError:
                pass
            if len(taken) >= wanted:
                os.close(head[0])
                head = (None, None)
        now = time.monotonic()
        if signal_at is not None and now >= signal_at:
            os.kill(pid, getattr(signal, case["signal"]))
            signal_at = None
        if now >= deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    if head and head[0] is not None:
        os.close(head[0])
    code = os.waitstatus_to_exitcode(status)
    return {"code": code, "seconds": time.monotonic() - t0, "max_rss_mb": usage.ru_maxrss / 1024,
            "timed_out": timed_out, "head": taken.decode("utf-8", "replace") if head else None}


def main() -> None:
    import torch  # noqa: F401  (imported, never used: children inherit it)

    import gptcli.cli.app  # noqa: F401
    from gptcli.commands import eval, generate, hf, info, tokenizer, train  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
