"""Forensics: what a failed try lost, and what the exported cache held.

An engineer attaching findings to a BuildKit issue is asked what exactly is
missing, what the exported cache looked like and whether the build used it.
This module answers the first two:

* :func:`what_was_lost` compares a failed output with a *reference*: for
  ``oci`` output the cache-export build's layer list and config ``history``
  (a lost layer is a reference digest the output lacks, and its history entry
  names the Dockerfile step); for ``tar`` output the cache-export build's file
  tree, mapped to Dockerfile steps through the scenario's expected paths.
* :func:`read_cache` reads the exported cache once per batch: through the
  registry HTTP API (registry and inline caches) or the cache directory's
  ``index.json`` (local caches), and flags empty layers.
* :func:`write_bundle` keeps an evidence bundle per failure.

Reading a cache never raises: a cache that cannot be read gives facts with
``status="infra_error"``, and it never changes a trial's outcome.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import shlex
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import lab
from .verify import _norm, member_bytes

#: digests of layers known to hold nothing (a tar of two zero blocks, and its gzips)
EMPTY_LAYER_DIGESTS = {
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef": "empty tar",
    "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1": "gzip of an empty tar",
    "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4": "gzip of an empty tar (legacy Docker)",
}
#: blobs at most this large are fetched to check whether they are empty layers
SMALL_BLOB = 16384
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
CACHE_CONFIG_TYPE = "application/vnd.buildkit.cacheconfig.v0"


# Dockerfile steps ------------------------------------------------------------------


def dockerfile_steps(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    steps, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        if current.strip():
            steps.append(current.strip())
        current = ""
    if current.strip():
        steps.append(current.strip())
    return steps


def _words(step: str) -> tuple[str, list[str]]:
    keyword, _, rest = step.partition(" ")
    try:
        args = shlex.split(rest)
    except ValueError:
        args = rest.split()
    return keyword.upper(), [a for a in args if not a.startswith("--")]


def producers(steps: list[str], path: str) -> list[str]:
    """The steps that put ``path`` (an expected path) into the image, in Dockerfile order."""
    want = _norm(path)
    out = []
    for step in steps:
        keyword, args = _words(step)
        if keyword in ("COPY", "ADD") and len(args) >= 2:
            dest, sources = args[-1], args[:-1]
            targets = {_norm(dest)} | {
                _norm(posixpath.join(dest, posixpath.basename(s))) for s in sources
            }
            if want in targets or any(
                want.startswith(t + "/") for t in targets if dest.endswith("/")
            ):
                out.append(step)
        elif keyword in ("RUN", "WORKDIR") and _names(keyword, args, want):
            out.append(step)
    return out


def _names(keyword: str, args: list[str], want: str) -> bool:
    """A RUN names the path among its words; a WORKDIR creates its directory."""
    if keyword == "WORKDIR":
        return bool(args) and _norm(args[0]) == want
    return any(_norm(a) == want for a in args if "/" in a or a == want)


def steps_for_paths(dockerfile: str, missing: list[str]) -> list[str]:
    """The first producing step of each missing path (``unknown step for X`` when none)."""
    steps = dockerfile_steps(dockerfile)
    out: list[str] = []
    for path in missing:
        found = producers(steps, path)
        step = found[0] if found else f"unknown step for {path}"
        if step not in out:
            out.append(step)
    return out


# references ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What a complete output looks like: the batch's cache-export build."""

    kind: str  # "export-oci" | "export-tree" | "dockerfile"
    layers: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    paths: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Reference | None:
        if not data:
            return None
        return cls(
            kind=data["kind"],
            layers=tuple(data.get("layers") or ()),
            history=tuple(data.get("history") or ()),
            paths=tuple(data.get("paths") or ()),
        )


def reference_of(tarball: Path) -> Reference:
    """The reference a cache-export build's output gives (an OCI layout or a file tree)."""
    with tarfile.open(tarball, mode="r:*") as tar:
        names = {_norm(m.name) for m in tar.getmembers()}
        if "index.json" in names and "oci-layout" in names:
            layers, history = _oci_layers_and_history(tar)
            return Reference("export-oci", layers=tuple(layers), history=tuple(history))
        files = sorted(n for n in (_norm(m.name) for m in tar.getmembers() if not m.isdir()) if n)
    return Reference("export-tree", paths=tuple(files))


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    algo, _, hexpart = digest.partition(":")
    return member_bytes(tar, f"blobs/{algo}/{hexpart}")


def _oci_layers_and_history(tar: tarfile.TarFile) -> tuple[list[str], list[dict[str, Any]]]:
    index = json.loads(member_bytes(tar, "index.json"))
    manifest = json.loads(_blob(tar, index["manifests"][0]["digest"]))
    if "manifests" in manifest:
        manifest = json.loads(_blob(tar, manifest["manifests"][0]["digest"]))
    config = json.loads(_blob(tar, manifest["config"]["digest"]))
    return [layer["digest"] for layer in manifest["layers"]], list(config.get("history") or [])


def _step_of(history_entry: dict[str, Any]) -> str:
    text = str(history_entry.get("created_by", "")).strip()
    text = text.removesuffix("# buildkit").strip()
    for shell in ("/bin/sh -c #(nop) ", "/bin/sh -c "):
        if shell in text:
            before, _, after = text.partition(shell)
            text = (before + after).strip()
    return text or "(no history)"


def layer_steps(layers: list[str] | tuple[str, ...], history: list | tuple) -> dict[str, str]:
    """Layer digest -> the step that made it: history entries without ``empty_layer``
    correspond, in order, to the manifest's layers."""
    made = [h for h in history if not h.get("empty_layer")]
    if len(made) != len(layers):
        return {}
    return {digest: _step_of(h) for digest, h in zip(layers, made, strict=True)}


@dataclass(frozen=True)
class Loss:
    """What one failed try lost, and against which reference that was judged."""

    steps: list[str]
    digests: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # reference files absent from the output
    reference: str = "dockerfile"


def what_was_lost(
    tarball: Path | None,
    missing: list[str],
    dockerfile: str,
    reference: Reference | None,
    *,
    layer_digests: list[str] | None = None,
) -> Loss:
    """Name the lost steps (and, for OCI output, the lost layer digests) of a failed try.

    Falls back to mapping the missing expected paths through the Dockerfile when
    the output or the reference cannot say more; the result says which it used.
    """
    if reference is not None and reference.kind == "export-oci" and layer_digests is not None:
        lost = [d for d in reference.layers if d not in set(layer_digests)]
        by_layer = layer_steps(reference.layers, reference.history)
        if lost and by_layer:
            return Loss(
                steps=[by_layer[d] for d in lost],
                digests=lost,
                reference="export-oci: cache-export build's layers and history",
            )
    if reference is not None and reference.kind == "export-tree" and tarball is not None:
        try:
            with tarfile.open(tarball, mode="r:*") as tar:
                have = {_norm(m.name) for m in tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError):
            have = None
        if have is not None:
            gone = [p for p in reference.paths if p not in have]
            return Loss(
                steps=steps_for_paths(dockerfile, missing),
                paths=gone,
                reference="export-tree: cache-export build's file tree, mapped through expected paths",
            )
    return Loss(
        steps=steps_for_paths(dockerfile, missing),
        reference="dockerfile: expected paths mapped to Dockerfile steps",
    )


# the exported cache ----------------------------------------------------------------


@dataclass(frozen=True)
class CacheLayer:
    digest: str
    size: int | None
    media_type: str
    empty: bool | None  # None: too large to be empty, or unreadable


@dataclass
class CacheFacts:
    """The exported cache of one batch (one row of the store's ``batches`` table)."""

    run_id: str
    cache_type: str
    exporter: str
    location: str
    status: str = "ok"  # ok | infra_error | skipped
    detail: str = ""
    manifest_digest: str = ""
    media_type: str = ""
    layers: list[CacheLayer] = field(default_factory=list)
    manifest_path: str = ""  # relative to the run directory
    reference: dict[str, Any] | None = None

    def describe(self, *, short: bool = False) -> list[str]:
        """What the cache held, as Markdown lines: a sentence and its layer table."""
        if self.status != "ok":
            return [f"Not readable: {self.detail}"]
        return [
            f"`{self.location}` ({self.cache_type} cache exported by `{self.exporter}`): "
            f"manifest `{self.manifest_digest}`, {self.layer_count} layers, "
            f"{self.empty_layers} of them empty.",
            "",
            *self.layer_table(short=short),
        ]

    def layer_table(self, *, short: bool = False) -> list[str]:
        """The cache's layers as a Markdown table, empty layers marked."""
        lines = ["| # | digest | size | media type | empty |", "|---:|---|---:|---|---|"]
        for i, layer in enumerate(self.layers, 1):
            digest = f"{layer.digest[:19]}…" if short else layer.digest
            empty = {True: "**empty**", False: "", None: "?"}[layer.empty]
            lines.append(f"| {i} | `{digest}` | {layer.size} | {layer.media_type} | {empty} |")
        return lines

    @property
    def layer_count(self) -> int:
        return len(self.layers)

    @property
    def empty_layers(self) -> int:
        return sum(bool(layer.empty) for layer in self.layers)

    def to_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "cache_type": self.cache_type,
            "exporter": self.exporter,
            "location": self.location,
            "status": self.status,
            "detail": self.detail,
            "manifest_digest": self.manifest_digest,
            "media_type": self.media_type,
            "layer_count": self.layer_count,
            "empty_layers": self.empty_layers,
            "layers": json.dumps([asdict(layer) for layer in self.layers]),
            "manifest_path": self.manifest_path,
            "reference": json.dumps(self.reference) if self.reference else None,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CacheFacts:
        return cls(
            run_id=row["run_id"],
            cache_type=row["cache_type"],
            exporter=row["exporter"],
            location=row["location"],
            status=row["status"],
            detail=row.get("detail") or "",
            manifest_digest=row.get("manifest_digest") or "",
            media_type=row.get("media_type") or "",
            layers=[CacheLayer(**d) for d in json.loads(row.get("layers") or "[]")],
            manifest_path=row.get("manifest_path") or "",
            reference=json.loads(row["reference"]) if row.get("reference") else None,
        )


def is_empty_layer(digest: str, blob: bytes | None) -> bool | None:
    """A layer that holds no file: a known empty digest, or a (gzipped) tar with no entries."""
    if digest in EMPTY_LAYER_DIGESTS:
        return True
    if blob is None:
        return None
    try:
        data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return not tar.getmembers()
    except (OSError, EOFError, tarfile.TarError):
        return False


def _layers_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    if "layers" in manifest:
        return list(manifest["layers"])
    # a BuildKit registry cache is an index whose entries are layer blobs plus its config
    return [m for m in manifest.get("manifests", []) if m.get("mediaType") != CACHE_CONFIG_TYPE]


class _Registry:
    def __init__(self, ref: str, timeout: float) -> None:
        name, self.tag = lab.split_tag(ref)
        host, _, self.repo = name.partition("/")
        self.base, self.timeout = f"http://{host}/v2/{self.repo}", timeout

    def get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(f"{self.base}/{path}")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read(), dict(response.headers)


def read_cache(
    *,
    run_id: str,
    cache_type: str,
    exporter: str,
    location: str,
    run_dir: Path,
    timeout: float = 15,
) -> CacheFacts:
    """Facts about an exported cache; a cache that cannot be read gives ``status="infra_error"``."""
    facts = CacheFacts(run_id, cache_type, exporter, location)
    try:
        if cache_type == "local":
            raw, media_type, blob = _local_manifest(Path(location))
        else:
            registry = _Registry(location, timeout)
            raw, headers = registry.get(f"manifests/{registry.tag}", MANIFEST_TYPES)
            media_type = headers.get("Content-Type", "")

            def blob(digest: str) -> bytes:
                return registry.get(f"blobs/{digest}")[0]

        manifest = json.loads(raw)
        if (
            manifest.get("mediaType")
            in (
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.oci.image.index.v1+json",
            )
            and all(
                m.get("mediaType", "").endswith(("manifest.v2+json", "manifest.v1+json"))
                for m in manifest.get("manifests", [])
            )
            and manifest.get("manifests")
        ):
            # an image index (inline cache of a multi-platform push): its first image
            raw = blob(manifest["manifests"][0]["digest"])
            manifest = json.loads(raw)
        facts.manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        facts.media_type = manifest.get("mediaType") or media_type
        for layer in _layers_of(manifest):
            digest, size = layer["digest"], layer.get("size")
            if digest in EMPTY_LAYER_DIGESTS:
                empty: bool | None = True
            elif size is not None and size <= SMALL_BLOB:
                empty = is_empty_layer(digest, blob(digest))
            else:
                empty = False if size else None
            facts.layers.append(CacheLayer(digest, size, layer.get("mediaType", ""), empty))
        run_dir.mkdir(parents=True, exist_ok=True)
        name = "cache-manifest.json"
        (run_dir / name).write_bytes(raw)
        facts.manifest_path = name
    except (OSError, ValueError, KeyError, IndexError, urllib.error.URLError) as exc:
        facts.status = "infra_error"
        facts.detail = f"cannot read the exported cache at {location}: {exc}"[:500]
    return facts


def _local_manifest(directory: Path) -> tuple[bytes, str, Any]:
    index = json.loads((directory / "index.json").read_text())
    desc = index["manifests"][0]

    def blob(digest: str) -> bytes:
        algo, _, hexpart = digest.partition(":")
        return (directory / "blobs" / algo / hexpart).read_bytes()

    return blob(desc["digest"]), desc.get("mediaType", ""), blob


# evidence bundles ----------------------------------------------------------------


def write_bundle(
    bundle: Path,
    *,
    trial: int,
    missing: list[str],
    loss: Loss,
    tarball: Path | None,
    build_log: Path | None,
    daemon_log: str | None,
    cache_manifest: Path | None,
    facts: CacheFacts | None,
) -> Path:
    """Keep one failure's evidence together; returns the bundle directory."""
    bundle.mkdir(parents=True, exist_ok=True)
    if tarball is not None and tarball.exists():
        shutil.move(str(tarball), bundle / ("output" + "".join(tarball.suffixes)))
    if build_log is not None and build_log.exists():
        shutil.copyfile(build_log, bundle / "build.log")
    if daemon_log:
        (bundle / "buildkitd.log").write_text(daemon_log)
    if cache_manifest is not None and cache_manifest.exists():
        shutil.copyfile(cache_manifest, bundle / "cache-manifest.json")
    lines = [
        f"# What trial {trial} lost",
        "",
        f"- missing expected paths: {', '.join(missing) or 'none'}",
        f"- lost Dockerfile steps: {'; '.join(f'`{s}`' for s in loss.steps) or 'none identified'}",
    ]
    if loss.digests:
        lines.append(f"- lost layers: {', '.join(f'`{d}`' for d in loss.digests)}")
    if loss.paths:
        shown = ", ".join(f"`{p}`" for p in loss.paths[:20])
        lines.append(f"- files the cache-export build had and this output lacks: {shown}")
    lines.append(f"- judged against: {loss.reference}")
    if facts is not None:
        lines += ["", "## The imported cache", "", *facts.describe(short=True)]
    lines += ["", "## Files", ""]
    lines += [f"- `{p.name}`" for p in sorted(bundle.iterdir()) if p.name != "what-was-lost.md"]
    (bundle / "what-was-lost.md").write_text("\n".join(lines) + "\n")
    return bundle


def find_run_dir(runs: Path, run_id: str) -> Path | None:
    """A run's directory: ``runs/<run>`` for a batch, ``runs/<sweep>/<run>`` for a sweep cell."""
    for candidate in (runs / run_id, *sorted(runs.glob(f"*/{run_id}"))):
        if candidate.is_dir():
            return candidate
    return None
