"""Running under torchrun: the process group, the shards, and collectives that fail together.

`join(device, threads, timeout)` returns the group this process belongs to. Without torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK) that is `SINGLE`, whose collectives are the
identity, and torch.distributed is never imported. Under torchrun it initialises the default
process group from that environment (gloo for the CPU, nccl for CUDA, where `cuda` means
`cuda:LOCAL_RANK`) with a timeout on every collective, and gives each rank its share of the
machine's cores (cores / local ranks) unless `--threads` says otherwise: torchrun itself sets
OMP_NUM_THREADS=1 for every worker, which would leave all but one core of a rank idle.

A rank that fails must not leave the others waiting in a collective. Every command runs inside
`group.failing_together()`: the first rank to raise publishes its message (and exit status) in
the rendezvous store, then exits, which closes its connections; a rank blocked in (or entering)
a collective then gets a transport error, reads the message from the store and raises it as its
own (`PeerFailed`), so every rank ends within seconds with the same words. Where no message can
be read (the store went with the failed rank), the error says which collective broke. The
timeout is the last resort for a rank that hangs without exiting.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch

from .errors import AITimeStepperError, ConfigError

FAILURE_KEY = "aitimestepper/failure"
FAILURE_COUNT_KEY = "aitimestepper/failures"
DONE_KEY = "aitimestepper/done/{generation}/{rank}"
MESSAGE_WAIT_S = 10  # how long a rank whose collective broke waits for the failed rank's message
POLL_S = 0.05  # wait_for_all's polling interval


class PeerFailed(AITimeStepperError, RuntimeError):
    """Another rank failed; the message is that rank's own."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def block(count: int, rank: int, size: int) -> slice:
    """Rank `rank`'s contiguous block of `count` items split over `size` ranks, in rank order; the
    first count % size ranks take one more."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Group:
    """One process on its own: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    distributed = False  # True under torchrun, even with one rank (the collectives are real then)

    def device(self, device: str) -> str:
        """The device this rank runs on for the configured one."""
        return device

    def shard(self, count: int) -> slice:
        """This rank's block of `count` items (see block)."""
        return block(count, self.rank, self.size)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; every rank gets the same bits."""
        return tensor

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        return [value]

    def wait_for_all(self) -> None:
        """Return when every rank got here (without a time limit: ranks may finish their shards
        far apart); raises PeerFailed as soon as a rank has failed."""

    @contextlib.contextmanager
    def failing_together(self, exit_status_of=lambda error: 1) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


SINGLE = Group()


class ProcessGroup(Group):
    """This process as one rank of the torchrun job (torch.distributed's default group)."""

    distributed = True

    def __init__(self, device: str, timeout_s: float) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.size))
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {device}: no CUDA device is visible to rank {self.rank}")
            torch.cuda.set_device(self.device(device))
        self._generation = 0
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                                    device_id=torch.device(self.device(device)) if self.cuda else None)
        self._store = dist.distributed_c10d._get_default_store()
        # Collectives on this device: gloo reduces CPU tensors, nccl CUDA ones.
        self._on = torch.device(self.device(device)) if self.cuda else torch.device("cpu")

    def device(self, device: str) -> str:
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    # -- collectives ------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as error:  # DistBackendError and the transport's errors
            raise self._peer_failure(what, error) from None

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self._on:
            self._call("all_reduce", self._dist.all_reduce, tensor)
            return tensor
        moved = tensor.to(self._on)
        self._call("all_reduce", self._dist.all_reduce, moved)
        return tensor.copy_(moved)

    def all_gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._call("all_gather_object", self._dist.all_gather_object, out, value)
        return out

    def wait_for_all(self) -> None:
        self._generation += 1
        keys = [DONE_KEY.format(generation=self._generation, rank=r) for r in range(self.size)]
        self._store.set(keys[self.rank], "1")
        while True:
            self._raise_if_failed()
            if self._store.check(keys):
                return
            time.sleep(POLL_S)

    # -- failures ---------------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._store.check([FAILURE_KEY]):
            raise self._published()

    def _published(self) -> PeerFailed:
        record = json.loads(self._store.get(FAILURE_KEY))
        return PeerFailed(record["message"], record["exit_status"])

    def _peer_failure(self, what: str, error: RuntimeError) -> PeerFailed:
        """The error to raise when a collective broke: the failed rank's message if it left one."""
        deadline = time.monotonic() + MESSAGE_WAIT_S
        while time.monotonic() < deadline:
            try:
                if self._store.check([FAILURE_KEY]):
                    return self._published()
            except RuntimeError:
                break  # the store is gone (it lived in the failed rank)
            time.sleep(POLL_S)
        return PeerFailed(f"rank {self.rank}: {what} failed: another rank stopped or stalled ({str(error).splitlines()[0]}); "
                          "see that rank's error above", 1)

    def publish(self, message: str, exit_status: int) -> None:
        """Leave this rank's failure in the store for the others (the first failure wins)."""
        try:
            if self._store.add(FAILURE_COUNT_KEY, 1) == 1:
                self._store.set(FAILURE_KEY, json.dumps({"message": message, "exit_status": exit_status}))
        except RuntimeError:
            pass  # no store left: the others see the broken collective and say so

    @contextlib.contextmanager
    def failing_together(self, exit_status_of=lambda error: 1) -> Iterator[None]:
        """Publish the message of any error raised inside (except another rank's), then re-raise."""
        try:
            yield
        except PeerFailed:
            raise
        except BaseException as error:
            # A user-facing error has the same words on every rank that meets it; anything else
            # says where it happened.
            message = (str(error) if isinstance(error, AITimeStepperError)
                       else f"rank {self.rank}: {type(error).__name__}: {error}")
            self.publish(message, exit_status_of(error))
            raise

    def close(self) -> None:
        """Tear the group down at the end of a command, together: a rank that tore its connections
        down while another still used them could abort that one at exit."""
        if self._dist.is_initialized():
            self._call("barrier", self._dist.barrier)
            self._dist.destroy_process_group()


_current: Optional[Group] = None


def join(device: str = "cpu", threads: int = 0, timeout_s: float = 300.0) -> Group:
    """This process's group (initialised on the first call), with its thread count set."""
    global _current
    if _current is None:
        _current = ProcessGroup(device, timeout_s) if launched_by_torchrun() else SINGLE
    if threads:
        torch.set_num_threads(threads)
    elif _current.local_size > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _current.local_size))
    return _current


def current() -> Group:
    """The group join() set up (SINGLE before that)."""
    return _current if _current is not None else SINGLE


def leave() -> None:
    """Tear the process group down (at the end of a command)."""
    global _current
    if _current is not None:
        _current.close()
    _current = None
