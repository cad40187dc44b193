"""
One relayd per state store: an exclusive lock beside the SQLite file, held for the process's life.

Two relayd processes on one store each believe they own its rooms and identities: one's running
game is stored as finished by the other, and both mint ids for one device. The lock is flock(2) on
`<store>.lock`, which the kernel releases when the process ends however it ends (kill -9 included),
so a restart never finds a stale lock. The file names the pid that holds it, for the refusal line.
"""

from __future__ import annotations

import fcntl
import os


class StateInUse(Exception):
    """Another process holds the lock."""


class StateLock:
    def __init__(self, store_path: str):
        self.path = f"{store_path}.lock"
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateInUse(f"{self.path} is held by another relayd (pid {holder}): one relayd per state store; "
                             f"give this one another state_dir or store") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock
