"""One run per output: an exclusive lock file beside the checkpoint, held for the whole run.

Two runs writing the same output would race on its checkpoint (``--no-resume`` deletes it
under the other run) and on the final rename. :class:`RunLock` takes an ``flock`` on
``<checkpoint>.lock`` before anything is sent, and writes who holds it (host, pid, start
time) into the file, so a second run is refused at once with a message naming the first.

The operating system releases an ``flock`` when its process dies, however it dies
(``kill -9`` included), so a lock file left behind by a dead run is simply taken over: no
stale-lock guessing from pids or ages. The file is removed on release; a run that opened
the path just before the removal finds, once it holds the lock, that the path no longer
names the file it locked, and starts over on the new one.

``flock`` is honoured between processes on one machine and on most network filesystems
(NFSv4, Lustre); the holder's host is shown so a run on another machine can be recognised.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import orjson

from engine.errors import RunLocked, storage_error

__all__ = ["RunLock", "lock_path"]

log = logging.getLogger("engine.runlock")


def lock_path(checkpoint_dir: Path) -> Path:
    """``<checkpoint>.lock``: beside the checkpoint, not in it, since ``--no-resume`` and a
    successful run delete the checkpoint directory while the lock is held."""
    return checkpoint_dir.with_name(checkpoint_dir.name + ".lock")


@dataclass
class RunLock:
    """A held run lock; :meth:`release` (or leaving the ``with`` block) gives it up."""

    path: Path
    _fd: int

    @classmethod
    def acquire(cls, path: Path, *, output: str) -> RunLock:
        """Take the lock at ``path`` for a run writing ``output``, or refuse at once.

        Raises:
            RunLocked: a live process holds it; the message names it (host, pid, start).
            StorageError: the lock file cannot be created (permission, read-only, ...).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("create the directory of", str(path), exc) from exc
        while True:
            fd = _open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLocked(
                    f"another run is already writing {output}: {holder} (lock {path}); wait "
                    "for it to finish or stop it, then rerun: a rerun resumes from its "
                    "checkpoint. The lock goes away with its process, even after kill -9"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise storage_error("lock", str(path), exc) from exc
            if _same_file(fd, path):
                break
            os.close(fd)  # removed by its last holder between our open and our lock
        lock = cls(path, fd)
        lock._record(output)
        return lock

    def _record(self, output: str) -> None:
        """Write who holds the lock (a dead holder's record is replaced)."""
        started = datetime.now(UTC).isoformat(timespec="seconds")
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, orjson.dumps({**doc, "output": output}) + b"\n", 0)
        except OSError as exc:
            self.release()
            raise storage_error("write the run lock", str(self.path), exc) from exc

    def release(self) -> None:
        """Remove the lock file, then unlock it (safe to call twice)."""
        if self._fd < 0:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError as exc:  # the run's result stands; a leftover lock file is harmless
            log.warning("could not remove the run lock %s: %s", self.path, exc)
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise storage_error("create the run lock", str(path), exc) from exc


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """The holder as written in the lock file, for the refusal message."""
    try:
        doc = orjson.loads(os.pread(fd, 4096, 0))
        return f"pid {doc['pid']} on host {doc['host']}, started {doc['started']}"
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return "a run that is still starting (its details are not written yet)"
