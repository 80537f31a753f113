"""One serving process per SQLite log: an advisory lock on a file beside it.

A SQLite log has no leases (those need PostgreSQL): two servers on one file would each
fold only their own writes and silently diverge. ``serve`` therefore takes an exclusive
``flock`` on ``<log>.lock`` for as long as it runs. The operating system drops the lock
when the process ends, however it ends (SIGKILL included), so a crash never leaves a
stale lock behind. Read-only commands (``audit verify``, ``events``, ``status``...) do
not take it and keep working on a served log.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LogInUseError(RuntimeError):
    """Another process serves this SQLite log (or its lock file cannot be opened)."""


def lock_path(db: Path) -> Path:
    """The sidecar lock file of a SQLite log."""
    return db.with_name(db.name + ".lock")


@contextmanager
def serving_lock(db: Path) -> Iterator[None]:
    """Hold the log's serving lock while the context runs; refuse if another has it.

    The lock file names its holder (pid and host) so the refusal can say who. It is
    never removed: unlinking it would let a newcomer lock a fresh file while an older
    process still holds the old one.
    """
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LogInUseError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise LogInUseError(
                f"{db} is already served by another process ({holder}); a SQLite log has "
                "one server at a time (several servers need PostgreSQL). Read-only commands "
                "such as 'osupgrade audit verify' and 'osupgrade events' work meanwhile."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
