"""Tar archives in and out of containers."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterable

import docker.errors
from docker.models.containers import Container


def tar_of(files: dict[str, bytes], *, dirs: Iterable[str] = (), dir_mode: int = 0o1777) -> bytes:
    """An in-memory tar of ``files`` (path -> content) and world-writable ``dirs``.

    The directories are writable by any uid because rootless BuildKit runs as an
    unprivileged user inside the container and writes its output there.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        made: set[str] = set()

        def add_dir(path: str) -> None:
            path = path.strip("/")
            if not path or path in made:
                return
            add_dir(os.path.dirname(path))
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            info.mode = dir_mode
            info.mtime = int(time.time())
            tar.addfile(info)
            made.add(path)

        for d in dirs:
            add_dir(d)
        for path, content in files.items():
            add_dir(os.path.dirname(path.strip("/")))
            info = tarfile.TarInfo(path.strip("/"))
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def copy_out(container: Container, path: str, dest_dir: str) -> None:
    """Copy ``path`` out of a (possibly stopped) container into ``dest_dir``."""
    try:
        stream, _ = container.get_archive(path)
        buf = io.BytesIO(b"".join(stream))
    except docker.errors.NotFound as exc:
        raise FileNotFoundError(path) from exc
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dest_dir, filter="data")
