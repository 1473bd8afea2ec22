"""Data-parallel training under torchrun: the process group and the few collectives the
training command and the trainer need.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT); without
them gptcli is one process and nothing here is used. Gradients travel over NCCL when the
ranks train on CUDA (rank r on cuda:LOCAL_RANK) and over gloo on the CPU; messages
(JSON, safetensors bytes, never pickle) always go over gloo. Every collective has a
timeout, GPTCLI_DIST_TIMEOUT seconds (default 1800: long enough for rank 0 to train a
tokenizer while the others wait), so a rank that dies never leaves the others waiting
for ever; torchrun itself stops every rank as soon as one fails. Knows nothing of models
or files.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from gptcli.errors import ReportedElsewhere, RunError, UsageError, first_line

DEFAULT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (even as its only process)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that reads the corpus first, writes the run folder and speaks."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Training through DDP: under torchrun, even with one process (which proves the
        NCCL path on one GPU); never without it."""
        return self.launched or self.world > 1


def from_env() -> Dist:
    """Which process this is, from the variables torchrun sets (none: a plain process)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is not below WORLD_SIZE {world}")
    return Dist(rank, world, local, launched=True)


def timeout() -> timedelta:
    text = os.environ.get("GPTCLI_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(f"GPTCLI_DIST_TIMEOUT must be a number of seconds above 0, got {text!r}")
    return timedelta(seconds=seconds)


def start(dist: Dist) -> None:
    """Join the process group (once per process): gloo, and NCCL too where CUDA is."""
    if not dist.active or tdist.is_initialized():
        return
    wait = timeout()
    cuda = torch.cuda.is_available()
    if cuda:
        if dist.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {dist.local_rank} but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s): start at most that many processes per machine")
        torch.cuda.set_device(dist.local_rank)
    try:
        tdist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", rank=dist.rank, world_size=dist.world,
                                 timeout=wait)
    except Exception as e:  # a rendezvous that failed or timed out
        raise RunError(f"could not join the torchrun job of {dist.world} process(es) ({first_line(e)})") from None


def stop(finished: bool) -> None:
    """Leave the process group. When every rank `finished` its work, they first wait for
    each other: gloo aborts a process that leaves while a peer still talks to it."""
    if tdist.is_initialized():
        if finished:
            tdist.barrier()
        tdist.destroy_process_group()


def place(dist: Dist, device: torch.device) -> torch.device:
    """The device this rank trains on: cuda:LOCAL_RANK for CUDA."""
    return torch.device("cuda", dist.local_rank) if dist.active and device.type == "cuda" else device


# -- messages (gloo, CPU) --------------------------------------------------------------


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """`data` from rank `src` to every rank."""
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.long)
    tdist.broadcast(size, src)
    buffer = torch.empty(int(size.item()), dtype=torch.uint8)
    if data is not None and data:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    tdist.broadcast(buffer, src)
    return buffer.numpy().tobytes()


def broadcast_json(obj: object, src: int = 0) -> object:
    data = json.dumps(obj).encode() if tdist.get_rank() == src else None
    return json.loads(broadcast_bytes(data, src))


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rank 0's named CPU tensors to every rank, as safetensors bytes."""
    from safetensors.torch import load, save

    return load(broadcast_bytes(save(tensors) if tensors is not None else None))


def all_gather_json(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    return [broadcast_json(obj if tdist.get_rank() == r else None, src=r) for r in range(tdist.get_world_size())]


# -- the start of a run: rank 0 prepares, the others follow ------------------------------


_announced = False  # whether rank 0 has sent its announcement (once per process)


def announce(message: dict) -> None:
    """Rank 0: the run is prepared; here is what the other ranks need to join it."""
    global _announced
    broadcast_json({"go": message})
    _announced = True


def abort_unless_announced(reason: str) -> None:
    """Rank 0, failing: if the other ranks still wait for the announcement, tell them to
    stop (rank 0 tells the user why). Afterwards, torchrun stops them."""
    if tdist.is_initialized() and not _announced:
        with contextlib.suppress(Exception):  # they may be gone already
            broadcast_json({"error": reason})


def await_announcement() -> dict:
    """The other ranks: rank 0's announcement; ReportedElsewhere if rank 0 failed."""
    try:
        message = broadcast_json(None)
    except Exception as e:  # rank 0 died, or the timeout passed
        raise RunError(f"rank {tdist.get_rank()}: no word from rank 0 ({str(e).strip()[:200]}); if preparing takes "
                       "longer than GPTCLI_DIST_TIMEOUT seconds, raise it") from None
    if "error" in message:
        raise ReportedElsewhere()
    return message["go"]


def check_all_ready(problem: str | None) -> None:
    """Every rank says whether it is ready (None) or what stopped it; if any is not, all
    stop: rank 0 with the first problem as its error, the others quietly."""
    problems = [p for p in all_gather_json(problem) if p]
    if problems:
        if tdist.get_rank() == 0:
            raise RunError(problems[0])
        raise ReportedElsewhere()


def failure(dist: Dist, e: Exception) -> RunError:
    """An unexpected error of one rank, as the line that rank prints: which rank, and for
    a lost connection, that the cause is another rank's failure (printed by that rank)."""
    lost = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")  # gloo's plain RuntimeErrors
    if isinstance(e, tdist.DistError) or any(text in str(e) for text in lost):
        detail = "" if any(text in str(e) for text in lost) else f" ({first_line(e)[:160]})"
        return RunError(f"rank {dist.rank}: lost contact with the other training processes: one of them failed or "
                        f"was stopped{detail}")
    return RunError(f"rank {dist.rank}: {type(e).__name__}: {first_line(e)}")


# -- training (the device's backend) ----------------------------------------------------


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a scalar tensor."""
    value = value.detach().clone()
    tdist.all_reduce(value)
    return value / tdist.get_world_size()


def all_max(values: torch.Tensor) -> torch.Tensor:
    """The elementwise largest of every rank's `values` (a small CPU tensor)."""
    values = values.clone()
    tdist.all_reduce(values, op=tdist.ReduceOp.MAX)
    return values
