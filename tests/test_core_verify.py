"""The verdict on handmade archives: rootfs tars, OCI layouts and docker archives.

Every archive here is written by the test, entry by entry, so each one shows a
single rule of the verdict (whiteouts, opaque directories, dotfiles, expected
directories, every expected path) without Docker. The same rules on real
BuildKit output are in ``test_verify.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from repro_lib.errors import VerifyError
from repro_lib.records import Outcome
from repro_lib.scenario import load_scenario
from repro_lib.verify import _norm, member_bytes, verify_tarball

#: the layer kinds an image output can have
IMAGE_KINDS = ("oci", "docker")


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None) -> None:
    """Add a directory (a name ending in ``/``) or a file (``data``, else its own name)."""
    info = tarfile.TarInfo(name.rstrip("/") or name)
    if name.endswith("/"):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    payload = name.encode() if data is None else data
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def tar_of(*names: str) -> bytes:
    """A tar holding ``names`` in order (``x/`` a directory, else a small file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            _add(tar, name)
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_rootfs(path: Path, *names: str) -> Path:
    path.write_bytes(tar_of(*names))
    return path


def write_oci(path: Path, layers: list[bytes], *, nested: bool = False) -> Path:
    """An ``--output type=oci`` layout: index.json → (index →) manifest → layer blobs."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        blobs[_digest(data)] = data
        return _digest(data)

    config = blob(json.dumps({"rootfs": {"diff_ids": []}}).encode())
    manifest = blob(
        json.dumps(
            {"config": {"digest": config}, "layers": [{"digest": blob(d)} for d in layers]}
        ).encode()
    )
    top = manifest
    if nested:  # a multi-platform image: the index points at another index
        top = blob(json.dumps({"manifests": [{"digest": manifest}]}).encode())
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps({"manifests": [{"digest": top}]}).encode())
        _add(tar, "blobs/")
        _add(tar, "blobs/sha256/")
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest.split(":")[1], data)
    return path


def write_docker(path: Path, layers: list[bytes], *, blob_paths: bool = False) -> Path:
    """A ``docker save`` archive: manifest.json → config (diff_ids) and layer tars.

    ``blob_paths`` names the layers ``blobs/sha256/<hex>`` as newer engines do,
    instead of the classic ``<id>/layer.tar``.
    """
    diff_ids = [_digest(d) for d in layers]
    if blob_paths:
        paths = ["blobs/sha256/" + d.split(":")[1] for d in diff_ids]
    else:
        paths = [f"{d.split(':')[1][:12]}/layer.tar" for d in diff_ids]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    with tarfile.open(path, "w") as tar:
        _add(tar, "config.json", config)
        for layer_path, data in zip(paths, layers, strict=True):
            _add(tar, layer_path, data)
        manifest = [{"Config": "config.json", "RepoTags": ["t:1"], "Layers": paths}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def write_image(kind: str, path: Path, layers: list[bytes]) -> Path:
    return write_oci(path, layers) if kind == "oci" else write_docker(path, layers)


# _norm -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,normal",
    [
        ("repro.txt", "repro.txt"),
        ("./repro.txt", "repro.txt"),
        ("/repro.txt", "repro.txt"),
        ("//repro.txt", "repro.txt"),
        ("./repro/", "repro"),
        ("repro/./a", "repro/a"),
        (".bashrc", ".bashrc"),
        ("./.bashrc", ".bashrc"),
        ("/.wh.repro.txt", ".wh.repro.txt"),
        ("./etc/.wh..wh..opq", "etc/.wh..wh..opq"),
        ("..hidden", "..hidden"),
        ("Xfile", "Xfile"),
        (".", ""),
        ("./", ""),
        ("/", ""),
    ],
)
def test_norm_strips_a_leading_dot_slash_or_slash_and_never_a_dot(name, normal):
    assert _norm(name) == normal


# whiteouts ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_whiteout_at_the_root_removes_the_file(kind, tmp_path):
    archive = write_image(
        kind, tmp_path / "out.tar", [tar_of("repro.txt", "keep"), tar_of(".wh.repro.txt")]
    )
    verdict = verify_tarball(archive, ["repro.txt", "keep"])
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == ("repro.txt",)
    # a whiteout is a marker, never a path of the image
    assert verify_tarball(archive, ["wh.repro.txt"]).missing == ("wh.repro.txt",)
    assert verify_tarball(archive, [".wh.repro.txt"]).missing == (".wh.repro.txt",)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_whiteout_in_a_directory_removes_only_its_file(kind, tmp_path):
    archive = write_image(
        kind,
        tmp_path / "out.tar",
        [tar_of("repro/", "repro/a", "repro/ab"), tar_of("./repro/.wh.a")],
    )
    verdict = verify_tarball(archive, ["repro/", "repro/a", "repro/ab"])
    assert verdict.missing == ("repro/a",)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_whiteout_of_a_directory_removes_its_tree(kind, tmp_path):
    archive = write_image(
        kind,
        tmp_path / "out.tar",
        [tar_of("repro/", "repro/a", "reprox"), tar_of(".wh.repro")],
    )
    verdict = verify_tarball(archive, ["repro/", "repro/a", "reprox"])
    assert verdict.missing == ("repro/", "repro/a")


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_an_opaque_whiteout_hides_what_lower_layers_put_in_the_directory(kind, tmp_path):
    lower = tar_of("etc/", "etc/old", "etc/sub/", "etc/sub/deep", "etcetera", "keep")
    # the new file comes before the marker in the tar: it still stays (same layer)
    upper = tar_of("etc/", "etc/new", "etc/.wh..wh..opq", "etc/newer")
    archive = write_image(kind, tmp_path / "out.tar", [lower, upper])
    expected = ["etc/", "etc/old", "etc/sub/", "etc/sub/deep", "etc/new", "etc/newer"]
    verdict = verify_tarball(archive, [*expected, "etcetera", "keep"])
    assert verdict.missing == ("etc/old", "etc/sub/", "etc/sub/deep")


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_an_opaque_whiteout_at_the_root_hides_every_lower_path(kind, tmp_path):
    archive = write_image(
        kind, tmp_path / "out.tar", [tar_of("old", "dir/", "dir/f"), tar_of(".wh..wh..opq", "new")]
    )
    verdict = verify_tarball(archive, ["old", "dir/", "dir/f", "new"])
    assert verdict.missing == ("old", "dir/", "dir/f")


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_whiteout_hides_lower_layers_only_never_its_own(kind, tmp_path):
    # the same layer re-creates the path after hiding the lower one (e.g. a dir
    # replaced by a fresh one); the upper entry stands whatever the tar order
    lower = tar_of("repro/", "repro/old")
    upper = tar_of("repro/", "repro/new", ".wh.repro")
    archive = write_image(kind, tmp_path / "out.tar", [lower, upper])
    assert verify_tarball(archive, ["repro/", "repro/new", "repro/old"]).missing == ("repro/old",)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_later_layer_brings_a_hidden_path_back(kind, tmp_path):
    layers = [tar_of("repro.txt"), tar_of(".wh.repro.txt"), tar_of("repro.txt")]
    archive = write_image(kind, tmp_path / "out.tar", layers)
    verdict = verify_tarball(archive, ["repro.txt"])
    assert verdict.outcome is Outcome.OK
    assert verdict.layers == 3


# dotfiles and expected directories ---------------------------------------------
@pytest.mark.parametrize("kind", ("rootfs", *IMAGE_KINDS))
def test_dotfiles_keep_their_dot(kind, tmp_path):
    names = ("./", "./.bashrc", "./.config/", "./.config/app")
    path = tmp_path / "out.tar"
    archive = (
        write_rootfs(path, *names)
        if kind == "rootfs"
        else write_image(kind, path, [tar_of(*names)])
    )
    verdict = verify_tarball(archive, [".bashrc", ".config/", "/.config/app", "./.bashrc"])
    assert verdict.outcome is Outcome.OK, verdict.missing
    missing = verify_tarball(archive, ["bashrc", "config/", "config/app"]).missing
    assert missing == ("bashrc", "config/", "config/app")


def test_expected_dotfiles_in_a_scenario_keep_their_dot(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "expected.txt").write_text("./.bashrc\n/.config/\nrepro.txt\n# a comment\n")
    assert load_scenario(tmp_path).expected == (".bashrc", ".config/", "repro.txt")


@pytest.mark.parametrize("kind", ("rootfs", *IMAGE_KINDS))
def test_an_expected_directory_must_be_a_directory(kind, tmp_path):
    names = ("./", "./repro", "./data/", "./data/x", "./empty/", "./implied/deeper/child")
    path = tmp_path / "out.tar"
    archive = (
        write_rootfs(path, *names)
        if kind == "rootfs"
        else write_image(kind, path, [tar_of(*names)])
    )
    # "repro" is a file here: "repro/" asks for a directory and is missing
    expected = ["repro/", "data/", "empty/", "implied/", "implied/deeper/", "absent/", "repro"]
    verdict = verify_tarball(archive, expected)
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == ("repro/", "absent/")


@pytest.mark.parametrize("kind", ("rootfs", *IMAGE_KINDS))
@pytest.mark.parametrize("gone", ["a", "b", "c"])
def test_every_expected_path_is_checked_the_last_one_too(kind, gone, tmp_path):
    names = [n for n in ("a", "b", "c") if n != gone]
    path = tmp_path / "out.tar"
    archive = (
        write_rootfs(path, *names)
        if kind == "rootfs"
        else write_image(kind, path, [tar_of(*names)])
    )
    verdict = verify_tarball(archive, ("a", "b", "c"))
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == (gone,)
    assert verdict.detail == f"missing: {gone}"


# the archive kinds and their evidence -------------------------------------------
def test_a_rootfs_tarball(tmp_path):
    archive = write_rootfs(tmp_path / "out.tar", "./", "./repro/", "./repro/a", "./repro.txt")
    verdict = verify_tarball(archive, ("repro.txt", "repro/", "repro/a"))
    assert verdict.outcome is Outcome.OK
    assert verdict.missing == ()
    assert (verdict.kind, verdict.entries, verdict.layers) == ("rootfs", 4, None)
    assert verdict.layer_digests == ()
    assert verdict.detail == "all expected paths present (4 entries, kind=rootfs)"
    lacking = verify_tarball(archive, ("repro.txt", "gone", "also/"))
    assert lacking.outcome is Outcome.MISSING_LAYER
    assert lacking.detail == "missing: gone, also/"


@pytest.mark.parametrize(
    "manifest", [b"not json", b'[{"name": "app"}]', b'["Layers"]', b'{"Layers": []}', b"[]"]
)
def test_a_rootfs_with_its_own_manifest_json_is_still_a_rootfs(manifest, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "manifest.json", manifest)
        _add(tar, "index.json")
        _add(tar, "repro.txt")
    (tmp_path / "out.tar").write_bytes(buf.getvalue())
    verdict = verify_tarball(tmp_path / "out.tar", ["repro.txt"])
    assert (verdict.kind, verdict.outcome) == ("rootfs", Outcome.OK)


@pytest.mark.parametrize("nested", [False, True])
def test_an_oci_layout_counts_its_layers(nested, tmp_path):
    layers = [tar_of("base"), tar_of("repro/", "repro/a"), tar_of("repro.txt")]
    archive = write_oci(tmp_path / "out.tar", layers, nested=nested)
    verdict = verify_tarball(archive, ["base", "repro/", "repro/a", "repro.txt"])
    assert verdict.outcome is Outcome.OK
    assert verdict.kind == "oci"
    assert verdict.layers == 3
    assert verdict.layer_digests == tuple(_digest(layer) for layer in layers)
    assert verdict.entries == 4
    assert verdict.detail == "all expected paths present (4 entries, kind=oci)"


def test_an_oci_layout_without_its_marker_file_is_still_read_as_one(tmp_path):
    archive = write_oci(tmp_path / "out.tar", [tar_of("repro.txt")])
    unmarked = _rewrite(archive, lambda n, d: None if n == "oci-layout" else d)
    verdict = verify_tarball(unmarked, ["repro.txt"])
    assert (verdict.kind, verdict.outcome, verdict.layers) == ("oci", Outcome.OK, 1)


def test_an_oci_layer_may_be_gzipped(tmp_path):
    layers = [gzip.compress(tar_of("base")), gzip.compress(tar_of("repro.txt"))]
    archive = write_oci(tmp_path / "out.tar", layers)
    assert verify_tarball(archive, ["base", "repro.txt"]).outcome is Outcome.OK


@pytest.mark.parametrize("blob_paths", [False, True])
def test_a_docker_archive_counts_its_layers_by_diff_id(blob_paths, tmp_path):
    layers = [tar_of("base"), tar_of("repro.txt")]
    archive = write_docker(tmp_path / "out.tar", layers, blob_paths=blob_paths)
    verdict = verify_tarball(archive, ["base", "repro.txt"])
    assert verdict.outcome is Outcome.OK
    assert verdict.kind == "docker"
    assert verdict.layers == 2
    assert verdict.layer_digests == tuple(_digest(layer) for layer in layers)
    assert verdict.entries == 2


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_an_emptied_layer_is_a_missing_layer(kind, tmp_path):
    archive = write_image(kind, tmp_path / "out.tar", [tar_of("base"), tar_of()])
    verdict = verify_tarball(archive, ["base", "repro.txt"])
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == ("repro.txt",)
    assert verdict.layers == 2


# unreadable output is never a verdict -------------------------------------------
LAYER = tar_of("repro.txt")
LAYER_HEX = _digest(LAYER).split(":")[1]


def _rewrite(archive: Path, change) -> Path:
    """A copy of ``archive`` with ``change(name, data)`` applied to each file (None drops it)."""
    out = archive.with_name("changed.tar")
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.isfile():
                data = change(m.name, data)
                if data is None:
                    continue
            _add(dst, m.name + ("/" if m.isdir() else ""), data)
    return out


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda n, d: b"{}" if n == "index.json" else d, "malformed OCI layout"),
        (lambda n, d: None if n == "index.json" else d, "index.json is missing"),
        (
            lambda n, d: None if len(d) < 200 and b'"layers"' in d else d,
            "blobs/sha256/\\w+ is missing",
        ),
        (lambda n, d: b"not json" if n == "index.json" else d, "malformed OCI layout"),
        (
            lambda n, d: None if n == "blobs/sha256/" + LAYER_HEX else d,
            f"blobs/sha256/{LAYER_HEX} is miss",
        ),
    ],
)
@pytest.mark.parametrize("nested", [False, True])
def test_a_broken_oci_layout_is_never_ok(change, message, nested, tmp_path):
    archive = write_oci(tmp_path / "out.tar", [LAYER], nested=nested)
    with pytest.raises(VerifyError, match=f"^output changed.tar: {message}"):
        verify_tarball(_rewrite(archive, change), ["repro.txt"])


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda n, d: b"[]" if n == "manifest.json" else d, ": malformed docker archive"),
        (lambda n, d: b"{}" if n == "config.json" else d, ": malformed docker archive"),
        (lambda n, d: None if n == "config.json" else d, ": config.json is missing"),
        (
            lambda n, d: None if n.endswith("/layer.tar") else d,
            ": \\S+ is missing from the image archive",
        ),
        (lambda n, d: b"junk" * 200 if n.endswith("layer.tar") else d, " layer 1 is not a"),
    ],
)
@pytest.mark.parametrize("blob_paths", [False, True])
def test_a_broken_docker_archive_is_never_ok(change, message, blob_paths, tmp_path):
    archive = write_docker(tmp_path / "out.tar", [LAYER], blob_paths=blob_paths)
    if blob_paths:  # the same damage, to the layer kept as blobs/sha256/<hex>
        change = _as_blob(change)
    with pytest.raises(VerifyError, match=f"^output changed.tar{message}"):
        verify_tarball(_rewrite(archive, change), ["repro.txt"])


def _as_blob(change):
    def on_blob(name, data):
        return change("x/layer.tar" if name == "blobs/sha256/" + LAYER_HEX else name, data)

    return on_blob


@pytest.mark.parametrize(
    "keep,message", [(0.0003, "is not a readable tar archive"), (0.9, "is truncated or corrupt")]
)
def test_a_truncated_gzipped_layer_is_never_ok(keep, message, tmp_path):
    # an incompressible payload, so that a cut late in the blob falls inside the file
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "repro.txt", random.Random(0).randbytes(64 * 1024))
    whole = gzip.compress(buf.getvalue())
    archive = write_oci(tmp_path / "out.tar", [whole[: int(len(whole) * keep)]])
    with pytest.raises(VerifyError, match=f"^output out.tar layer 1 {message}"):
        verify_tarball(archive, ["repro.txt"])


def test_absent_empty_entryless_and_cut_outputs_are_never_ok(tmp_path):
    with pytest.raises(VerifyError, match="out.tar was not produced"):
        verify_tarball(tmp_path / "out.tar", ["a"])
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(VerifyError, match="empty.tar is empty"):
        verify_tarball(tmp_path / "empty.tar", ["a"])
    (tmp_path / "none.tar").write_bytes(tar_of())
    with pytest.raises(VerifyError, match="none.tar has no entries"):
        verify_tarball(tmp_path / "none.tar", ["a"])
    whole = tar_of("a", "b")
    (tmp_path / "cut.tar").write_bytes(whole[:700])
    with pytest.raises(VerifyError, match="cut.tar is truncated or corrupt"):
        verify_tarball(tmp_path / "cut.tar", ["a"])
    (tmp_path / "junk.tar").write_bytes(b"\x00junk" * 300)
    with pytest.raises(VerifyError, match="junk.tar is not a readable tar archive"):
        verify_tarball(tmp_path / "junk.tar", ["a"])


def test_member_bytes_finds_a_file_with_or_without_a_leading_dot_slash():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "./index.json", b"dotted")
        _add(tar, "plain", b"bare")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert member_bytes(tar, "index.json") == b"dotted"
        assert member_bytes(tar, "plain") == b"bare"
        with pytest.raises(KeyError, match="absent"):
            member_bytes(tar, "absent")
