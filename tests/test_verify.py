"""Verification on real tarballs built by the engine's BuildKit, and broken copies of them."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from repro_lib import lab
from repro_lib.errors import VerifyError
from repro_lib.records import Outcome
from repro_lib.scenario import load_scenario
from repro_lib.verify import verify_tarball


def _engine_build(docker_client, docker_cli, base, tmp_path, *output_args: str):
    """Build the reference scenario on the engine's BuildKit; returns the scenario."""
    scenario = load_scenario(base_image=base)
    ctx = scenario.write_to(tmp_path / "ctx")
    env = dict(os.environ, DOCKER_BUILDKIT="1", DOCKER_HOST=lab.engine_host_of(docker_client))
    proc = subprocess.run(
        [
            docker_cli,
            "build",
            "--network",
            "host",
            "--progress=plain",
            "--build-arg",
            f"BASE_IMAGE={base}",
            *output_args,
            str(ctx),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return scenario


def _build(docker_client, docker_cli, base, tmp_path, output: str):
    dest = tmp_path / f"out-{output}.tar"
    scenario = _engine_build(
        docker_client, docker_cli, base, tmp_path, "-o", f"type={output},dest={dest}"
    )
    return scenario, dest


@pytest.fixture(scope="module")
def real_rootfs(docker_client, fixture_images, docker_cli, tmp_path_factory):
    return _build(
        docker_client, docker_cli, fixture_images["base"], tmp_path_factory.mktemp("v"), "tar"
    )


def _rewrite_without(src, dest, drop: str) -> None:
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin.getmembers():
            if m.name.lstrip("./") == drop:
                continue
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)


def test_complete_real_tarball_is_ok(real_rootfs):
    scenario, tarball = real_rootfs
    verdict = verify_tarball(tarball, scenario.expected)
    assert verdict.outcome is Outcome.OK
    assert verdict.missing == ()
    assert verdict.kind == "rootfs"
    assert verdict.entries > 5


def test_missing_file_is_missing_layer(real_rootfs, tmp_path):
    scenario, tarball = real_rootfs
    broken = tmp_path / "broken.tar"
    _rewrite_without(tarball, broken, "repro.txt")
    verdict = verify_tarball(broken, scenario.expected)
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == ("repro.txt",)
    assert "repro.txt" in verdict.detail


def test_missing_directory_is_missing_layer(real_rootfs, tmp_path):
    scenario, tarball = real_rootfs
    broken = tmp_path / "nodir.tar"
    _rewrite_without(tarball, broken, "repro")
    verdict = verify_tarball(broken, scenario.expected)
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.missing == ("repro/",)


def test_truncated_tarball_is_never_ok(real_rootfs, tmp_path):
    scenario, tarball = real_rootfs
    data = tarball.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VerifyError, match="truncated|corrupt|readable"):
        verify_tarball(cut, scenario.expected)


def test_garbage_is_never_ok(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(VerifyError):
        verify_tarball(junk, ("repro.txt",))


def test_empty_file_and_empty_archive_are_never_ok(tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(VerifyError, match="empty"):
        verify_tarball(empty, ("repro.txt",))
    no_entries = tmp_path / "none.tar"
    with tarfile.open(no_entries, "w"):
        pass
    with pytest.raises(VerifyError, match="no entries"):
        verify_tarball(no_entries, ("repro.txt",))
    with pytest.raises(VerifyError, match="not produced"):
        verify_tarball(tmp_path / "absent.tar", ("repro.txt",))


def _names(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        return t.getnames()


def _saved_image(docker_client, docker_cli, base, tmp_path):
    """A real image built by the engine and written by `docker save` (layers kept apart)."""
    ref = "repro-lib-test/verify:latest"
    scenario = _engine_build(docker_client, docker_cli, base, tmp_path, "-t", ref)
    dest = tmp_path / "saved.tar"
    try:
        with dest.open("wb") as f:
            for chunk in docker_client.images.get(ref).save():
                f.write(chunk)
    finally:
        docker_client.images.remove(ref, force=True)
    return scenario, dest


def test_image_archive_counts_layers(docker_client, fixture_images, docker_cli, tmp_path):
    scenario, tarball = _saved_image(docker_client, docker_cli, fixture_images["base"], tmp_path)
    verdict = verify_tarball(tarball, scenario.expected)
    assert verdict.kind == "docker"
    assert verdict.outcome is Outcome.OK
    # base, RUN, COPY and WORKDIR: the engine's exporter keeps the empty WORKDIR layer
    # (the moby exporter does not drop empty layers; see moby/buildkit#1993)
    assert verdict.layers == 4
    assert all(d.startswith("sha256:") for d in verdict.layer_digests)


def test_image_archive_with_a_layer_emptied_is_missing_layer(
    docker_client, fixture_images, docker_cli, tmp_path
):
    import json

    scenario, tarball = _saved_image(docker_client, docker_cli, fixture_images["base"], tmp_path)
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    broken = tmp_path / "broken.tar"
    with tarfile.open(tarball) as tin:
        layers = json.load(tin.extractfile("manifest.json"))[0]["Layers"]
        # the layer the COPY step made: the one that holds repro.txt
        last = next(p for p in layers if "repro.txt" in _names(tin.extractfile(p).read()))
        with tarfile.open(broken, "w") as tout:
            for m in tin.getmembers():
                if m.name == last:
                    m.size = len(empty.getvalue())
                    tout.addfile(m, io.BytesIO(empty.getvalue()))
                else:
                    tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    verdict = verify_tarball(broken, scenario.expected)
    assert verdict.outcome is Outcome.MISSING_LAYER
    assert verdict.layers == 4
