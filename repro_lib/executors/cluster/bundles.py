"""A failure's evidence bundle on its way from a worker's host to the client.

A bundle travels with its record as a tar.gz of at most ``BUNDLE_CAP`` bytes of
files, smallest first; the files left behind stay on the host, and the bundle's
``omitted.txt`` says where.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

#: bytes of files per evidence bundle sent to the client; larger files stay on the host
BUNDLE_CAP = 16 * 2**20


def pack_bundle(bundle: Path, host: str) -> bytes:
    """A failure's evidence bundle as a tar.gz, smallest files first up to ``BUNDLE_CAP``
    bytes; ``omitted.txt`` names the files left on the host, with their paths there."""
    files = sorted((p for p in bundle.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    buffer, used, omitted = io.BytesIO(), 0, []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            size = path.stat().st_size
            if used + size > BUNDLE_CAP:
                omitted.append(
                    f"{path.relative_to(bundle)} ({size} bytes): on host {host} at {path}"
                )
                continue
            tar.add(path, arcname=str(path.relative_to(bundle)))
            used += size
        if omitted:
            note = (
                f"Files over the {BUNDLE_CAP} byte cap of a bundle sent to the client:\n"
                + "\n".join(omitted)
                + "\n"
            ).encode()
            info = tarfile.TarInfo("omitted.txt")
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    return buffer.getvalue()


def unpack_bundle(data: bytes, run_dir: Path, evidence_path: str) -> None:
    """Unpack a bundle from :func:`pack_bundle` at ``run_dir/evidence_path``, where the
    client's ``repro-lib evidence`` finds it; nothing lands outside ``run_dir``."""
    bundle = (run_dir / evidence_path).resolve()
    if not bundle.is_relative_to(run_dir.resolve()):
        raise OSError(f"evidence path {evidence_path!r} leaves its run directory")
    bundle.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(bundle, filter="data")
