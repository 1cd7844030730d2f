"""One training run per run folder: an exclusive lock, and the folder tidied before the run writes.

The lock is fcntl.flock on <run folder>/.lock, which holds the owner's pid for the error message.
The kernel drops a flock when its process dies, so a lock file left by a killed run is simply
taken over. Holding the lock makes this run the folder's only writer, which is what lets it
remove temp files of interrupted checkpoint writes and (training/metrics.py) cut metrics.jsonl
back on --resume.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from .errors import ConfigError

LOCK_NAME = ".lock"
STALE_TEMP_GLOB = ".model_epoch_*.pt.*.tmp"  # save_checkpoint's temp names (mkstemp prefix/suffix)


class RunLock:
    """An exclusive, non-blocking lock on a run folder (created if missing)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise ConfigError(f"run folder {str(self.path.parent)!r} is in use by {who} (lock file "
                                  f"{str(self.path)!r}); wait for it or choose another --save-name") from None
            except BaseException:
                os.close(fd)
                raise
            # A releasing owner unlinks the file after we opened it: then we hold a lock on a
            # file nobody else will open, so start over on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Temp files of checkpoint writes that a killed run left in <run_dir>/model (call under the lock)."""
    removed = []
    for temp in sorted((Path(run_dir) / "model").glob(STALE_TEMP_GLOB)):
        try:
            temp.unlink()
            removed.append(temp)
        except FileNotFoundError:
            pass
    return removed


def claim_run_folder(run_dir: str | Path) -> RunLock:
    """Lock the run folder and remove stale checkpoint temp files; the caller releases the lock."""
    lock = RunLock(run_dir).acquire()
    try:
        remove_stale_temps(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock
