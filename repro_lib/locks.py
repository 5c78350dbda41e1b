"""A lock a process holds while it works on something recorded in a store.

Two processes must not drive one culprit search at once: both would run the
same next probe and record it twice. The lock is ``flock`` on a file beside the
store, so the kernel releases it when its holder dies, however it dies (a kill
leaves nothing to clean up but the file, which the next holder takes over). The
file holds the holder's pid for the refusal message and is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError


def lock_path(store_path: str | Path, name: str) -> Path:
    store = Path(store_path)
    return store.with_name(f".{store.name}.{name}.lock")


@contextlib.contextmanager
def held(store_path: str | Path, name: str, *, what: str) -> Iterator[Path]:
    """Hold the lock ``name`` of the store at ``store_path`` for the ``with`` block.

    Raises:
        UsageError: another live process holds it.
    """
    path = lock_path(store_path, name)
    path.parent.mkdir(parents=True, exist_ok=True)  # a lock may come before its new store
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(
                f"{what} is running in another process (pid {holder})",
                hint="wait for it to end, or stop it and resume",
            ) from None
        # the file may have been removed by a holder releasing it between our open
        # and our lock: then this lock guards nothing, so take the new file's
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
