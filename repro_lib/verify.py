"""Read a build's output tarball and decide whether every expected path is there.

Three kinds of tarball are understood:

* ``rootfs``: BuildKit's ``--output type=tar``, the image's filesystem flattened;
* ``oci``: ``--output type=oci`` (``index.json`` + ``blobs/``), layers kept apart;
* ``docker``: ``docker save`` / ``type=docker`` (``manifest.json``).

For the image kinds the layers are applied in order (whiteouts included) and
their count and digests become evidence. A tarball that cannot be read, is
empty, or has no entries raises :class:`VerifyError`; it is never ``ok``.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VerifyError
from .records import Outcome


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome  # OK or MISSING_LAYER; unreadable output raises instead
    missing: tuple[str, ...]
    kind: str
    entries: int
    layers: int | None = None
    layer_digests: tuple[str, ...] = field(default_factory=tuple)

    @property
    def detail(self) -> str:
        if not self.missing:
            return f"all expected paths present ({self.entries} entries, kind={self.kind})"
        return "missing: " + ", ".join(self.missing)


def _norm(name: str) -> str:
    """A member or expected path relative to the image root: ``./a/``, ``/a`` → ``a``.

    Only a leading ``./`` or ``/`` goes; a leading dot is part of the name
    (``.bashrc``, and the ``.wh.`` prefix that marks a whiteout).
    """
    return posixpath.normpath("/" + name).lstrip("/")


def _open_tar(data: bytes | Path, what: str) -> tarfile.TarFile:
    try:
        if isinstance(data, Path):
            return tarfile.open(data, mode="r:*")
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise VerifyError(f"{what} is not a readable tar archive: {exc}") from exc


def _members(tar: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    # getmembers() walks every header, and fails where a payload is cut short (it
    # checks the byte before each next header; a compressed stream is decompressed on
    # the way), so the payloads themselves need not be read.
    try:
        return tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, zlib.error) as exc:
        raise VerifyError(f"{what} is truncated or corrupt: {exc}") from exc


def _paths_of(members: list[tarfile.TarInfo]) -> tuple[set[str], set[str]]:
    files, dirs = set(), set()
    for m in members:
        name = _norm(m.name)
        if not name:  # the root itself
            continue
        (dirs if m.isdir() else files).add(name)
        parent = posixpath.dirname(name)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return files, dirs


def _missing(expected: tuple[str, ...], files: set[str], dirs: set[str]) -> tuple[str, ...]:
    out = []
    for path in expected:
        want_dir = path.endswith("/")
        name = _norm(path)
        present = name in dirs if want_dir else (name in files or name in dirs)
        if not present:
            out.append(path)
    return tuple(out)


def _apply_layers(layers: list[bytes], what: str) -> tuple[set[str], set[str], int]:
    """Union of layer filesystems with OCI whiteouts; returns files, dirs, entry count.

    A whiteout hides paths of the layers below its own, never entries of its own
    layer (OCI image spec, "Whiteouts"), so each layer's whiteouts are applied
    before its entries are added, whatever their order in the tar.
    """
    present: dict[str, bool] = {}  # path -> is_dir
    entries = 0
    for index, blob in enumerate(layers):
        tar = _open_tar(blob, f"{what} layer {index + 1}")
        with tar:
            members = _members(tar, f"{what} layer {index + 1}")
        added: dict[str, bool] = {}
        for m in members:
            name = _norm(m.name)
            base = posixpath.basename(name)
            parent = posixpath.dirname(name)
            if base == ".wh..wh..opq":  # the directory keeps nothing from below
                hidden = parent + "/" if parent else ""
                for p in [p for p in present if p.startswith(hidden)]:
                    del present[p]
            elif base.startswith(".wh."):
                gone = posixpath.join(parent, base[4:])
                for p in [p for p in present if p == gone or p.startswith(gone + "/")]:
                    del present[p]
            elif name:
                added[name] = m.isdir()
                entries += 1
        present.update(added)
    files = {p for p, is_dir in present.items() if not is_dir}
    dirs = {p for p, is_dir in present.items() if is_dir}
    for p in present:
        parent = posixpath.dirname(p)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return files, dirs, entries


def member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    """A file of a tar archive, named with or without a leading ``./``.

    Raises:
        KeyError: no such file in the archive.
    """
    for candidate in (name, "./" + name):
        try:
            f = tar.extractfile(candidate)
        except KeyError:
            continue
        if f is not None:
            return f.read()
    raise KeyError(name)


def _read_member(tar: tarfile.TarFile, name: str, what: str) -> bytes:
    try:
        return member_bytes(tar, name)
    except KeyError:
        raise VerifyError(f"{what}: {name} is missing from the image archive") from None


def verify_tarball(path: str | Path, expected: tuple[str, ...] | list[str]) -> Verdict:
    """Check that the output at ``path`` holds every expected path.

    Raises:
        VerifyError: the file is absent, empty, not a tar archive, truncated, or has no entries.
    """
    path = Path(path)
    expected = tuple(expected)
    what = f"output {path.name}"
    if not path.is_file():
        raise VerifyError(f"{what} was not produced")
    if path.stat().st_size == 0:
        raise VerifyError(f"{what} is empty (0 bytes)")
    with _open_tar(path, what) as tar:
        members = _members(tar, what)
        names = {_norm(m.name) for m in members}
        if not members:
            raise VerifyError(f"{what} has no entries")
        # an image archive with a part gone is still one: its damage must read as
        # unreadable output, never as a filesystem lacking the expected paths
        if "oci-layout" in names or (
            "index.json" in names and any(n.startswith("blobs/") for n in names)
        ):
            return _verify_oci(tar, expected, what)
        if "manifest.json" in names and (
            any(n.startswith("blobs/") or n.endswith(".tar") for n in names)
            or _lists_layers(member_bytes(tar, "manifest.json"))
        ):
            return _verify_docker_archive(tar, expected, what)
        missing = _missing(expected, *_paths_of(members))
        return Verdict(
            outcome=Outcome.MISSING_LAYER if missing else Outcome.OK,
            missing=missing,
            kind="rootfs",
            entries=len(members),
        )


def _lists_layers(manifest: bytes) -> bool:
    """Whether a manifest.json is a docker archive's, even one whose layer files are gone."""
    try:
        entries = json.loads(manifest)
    except ValueError:
        return False
    return isinstance(entries, list) and any(isinstance(e, dict) and "Layers" in e for e in entries)


def _blob(tar: tarfile.TarFile, digest: str, what: str) -> bytes:
    algo, _, hexpart = digest.partition(":")
    return _read_member(tar, f"blobs/{algo}/{hexpart}", what)


def _verify_oci(tar: tarfile.TarFile, expected: tuple[str, ...], what: str) -> Verdict:
    try:
        index = json.loads(_read_member(tar, "index.json", what))
        desc = index["manifests"][0]
        manifest = json.loads(_blob(tar, desc["digest"], what))
        if "manifests" in manifest:  # a nested index (multi-platform)
            manifest = json.loads(_blob(tar, manifest["manifests"][0]["digest"], what))
        digests = [layer["digest"] for layer in manifest["layers"]]
    except (KeyError, IndexError, ValueError) as exc:
        raise VerifyError(f"{what}: malformed OCI layout: {exc}") from exc
    blobs = [_blob(tar, d, what) for d in digests]
    files, dirs, entries = _apply_layers(blobs, what)
    missing = _missing(expected, files, dirs)
    return Verdict(
        outcome=Outcome.MISSING_LAYER if missing else Outcome.OK,
        missing=missing,
        kind="oci",
        entries=entries,
        layers=len(digests),
        layer_digests=tuple(digests),
    )


def _verify_docker_archive(tar: tarfile.TarFile, expected: tuple[str, ...], what: str) -> Verdict:
    try:
        manifest = json.loads(_read_member(tar, "manifest.json", what))[0]
        layer_paths = list(manifest["Layers"])
        config = json.loads(_read_member(tar, manifest["Config"], what))
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (KeyError, IndexError, ValueError) as exc:
        raise VerifyError(f"{what}: malformed docker archive: {exc}") from exc
    blobs = [_read_member(tar, p, what) for p in layer_paths]
    files, dirs, entries = _apply_layers(blobs, what)
    missing = _missing(expected, files, dirs)
    digests = tuple(diff_ids)
    return Verdict(
        outcome=Outcome.MISSING_LAYER if missing else Outcome.OK,
        missing=missing,
        kind="docker",
        entries=entries,
        layers=len(layer_paths),
        layer_digests=digests,
    )
