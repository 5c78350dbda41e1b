"""Forensics on real parts: tarballs and images the engine's BuildKit builds, the test's
own registry and local cache directory, and broken copies of them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.request

import pytest

from repro_lib import forensics, lab
from repro_lib.builders import count_cache_hits
from repro_lib.forensics import Reference, read_cache, reference_of, what_was_lost
from repro_lib.records import Outcome
from repro_lib.verify import verify_tarball

from .test_verify import _build, _engine_build, _rewrite_without, _saved_image


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


def _names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return tar.getnames()


def oci_from_docker_save(saved, dest, *, drop_layer_holding: str | None = None):
    """Repack a real `docker save` archive as an OCI layout (the same layer tars),
    optionally dropping, by hand, the layer that holds a path - as the bug does."""
    with tarfile.open(saved) as tin:
        manifest = json.load(tin.extractfile("manifest.json"))[0]
        config = tin.extractfile(manifest["Config"]).read()
        layers = [tin.extractfile(p).read() for p in manifest["Layers"]]
    if drop_layer_holding:
        layers = [blob for blob in layers if drop_layer_holding not in _names(blob)]
    oci_manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _sha(blob),
                    "size": len(blob),
                }
                for blob in layers
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _sha(oci_manifest),
                    "size": len(oci_manifest),
                }
            ],
        }
    ).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for blob in [config, oci_manifest, *layers]:
        files[f"blobs/sha256/{_sha(blob)[7:]}"] = blob
    with tarfile.open(dest, "w") as tout:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture(scope="module")
def saved_image(docker_client, fixture_images, docker_cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forensics")
    return _saved_image(docker_client, docker_cli, fixture_images["base"], tmp)


def test_oci_output_names_the_lost_layer_and_its_step(saved_image, tmp_path):
    scenario, saved = saved_image
    complete = oci_from_docker_save(saved, tmp_path / "complete.tar")
    broken = oci_from_docker_save(saved, tmp_path / "broken.tar", drop_layer_holding="repro.txt")
    reference = reference_of(complete)
    assert reference.kind == "export-oci" and len(reference.layers) == 4
    ok = verify_tarball(complete, scenario.expected)
    assert ok.outcome is Outcome.OK
    verdict = verify_tarball(broken, scenario.expected)
    assert verdict.outcome is Outcome.MISSING_LAYER and verdict.missing == ("repro.txt",)
    loss = what_was_lost(
        broken,
        list(verdict.missing),
        scenario.dockerfile,
        reference,
        layer_digests=list(verdict.layer_digests),
    )
    copy_layer = next(d for d in reference.layers if d not in verdict.layer_digests)
    assert loss.digests == [copy_layer]
    assert loss.steps == ["COPY repro.txt /"]
    assert loss.reference.startswith("export-oci")
    # a complete output against the same reference loses nothing
    assert [d for d in reference.layers if d not in ok.layer_digests] == []


def test_tar_output_maps_the_missing_path_to_its_step(
    docker_client, fixture_images, docker_cli, tmp_path
):
    scenario, complete = _build(docker_client, docker_cli, fixture_images["base"], tmp_path, "tar")
    reference = reference_of(complete)
    assert reference.kind == "export-tree" and "repro.txt" in reference.paths
    broken = tmp_path / "broken.tar"
    _rewrite_without(complete, broken, "repro.txt")
    verdict = verify_tarball(broken, scenario.expected)
    loss = what_was_lost(broken, list(verdict.missing), scenario.dockerfile, reference)
    assert loss.steps == ["COPY repro.txt /"] and loss.paths == ["repro.txt"]
    assert loss.reference.startswith("export-tree")
    # a lost directory maps to the RUN that made it
    gone_dir = tmp_path / "no-dir.tar"
    with tarfile.open(complete) as tin, tarfile.open(gone_dir, "w") as tout:
        for m in tin.getmembers():
            if m.name.lstrip("./").rstrip("/") != "repro":
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    verdict = verify_tarball(gone_dir, scenario.expected)
    assert what_was_lost(gone_dir, list(verdict.missing), scenario.dockerfile, reference).steps == [
        "RUN mkdir -p /repro"
    ]
    # without a reference the Dockerfile alone still names the step
    assert what_was_lost(None, ["repro.txt"], scenario.dockerfile, None).reference.startswith(
        "dockerfile"
    )


def test_cache_hits_are_counted_from_a_real_plain_progress_log(
    docker_client, fixture_images, docker_cli, tmp_path
):
    # BuildKit's plain progress is the same whether buildctl or `docker build` prints it
    first = _engine_build(docker_client, docker_cli, fixture_images["base"], tmp_path / "a")
    assert first is not None
    import os
    import subprocess

    ctx = tmp_path / "a" / "ctx"
    proc = subprocess.run(
        [docker_cli, "build", "--network", "host", "--progress=plain"]
        + ["--build-arg", f"BASE_IMAGE={fixture_images['base']}", str(ctx)],
        capture_output=True,
        text=True,
        env=dict(os.environ, DOCKER_BUILDKIT="1", DOCKER_HOST=lab.engine_host_of(docker_client)),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits, steps = count_cache_hits(proc.stderr)
    assert steps == 3 and hits == 3  # RUN, COPY, WORKDIR, all cached the second time


def _upload(registry: str, repo: str, data: bytes) -> str:
    digest = _sha(data)
    post = urllib.request.Request(f"http://{registry}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(post, timeout=10) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    urllib.request.urlopen(put, timeout=10).close()
    return digest


def test_cache_manifests_from_a_real_registry_flag_empty_layers(
    docker_client, fixture_images, lab_home
):
    with lab.Registry(
        docker_client, lab.new_run_id("t"), role="cache", image=fixture_images["registry"]
    ) as registry:
        ref = f"{registry.address}/repro-lib/pushed:inline"
        lab.push_image(docker_client, fixture_images["base"], ref)
        facts = read_cache(
            run_id="r", cache_type="inline", exporter="x", location=ref, run_dir=lab_home
        )
        assert facts.status == "ok", facts.detail
        assert facts.layer_count == 1 and facts.empty_layers == 0
        assert (lab_home / facts.manifest_path).is_file()
        # a hand-made manifest whose second layer holds nothing (gzip of an empty tar)
        repo = "repro-lib/handmade"
        full = gzip.compress(_tar_with("hello.txt"))
        empty = gzip.compress(_empty_tar())
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layers = [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": _upload(registry.address, repo, blob),
                "size": len(blob),
            }
            for blob in (full, empty)
        ]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": _upload(registry.address, repo, config),
                    "size": len(config),
                },
                "layers": layers,
            }
        ).encode()
        put = urllib.request.Request(
            f"http://{registry.address}/v2/{repo}/manifests/cache", data=manifest, method="PUT"
        )
        put.add_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
        urllib.request.urlopen(put, timeout=10).close()
        facts = read_cache(
            run_id="r",
            cache_type="registry",
            exporter="x",
            location=f"{registry.address}/{repo}:cache",
            run_dir=lab_home,
        )
        assert [layer.empty for layer in facts.layers] == [False, True]
        assert facts.empty_layers == 1
    # the registry is gone: the cache facts say so, they never raise
    gone = read_cache(
        run_id="r", cache_type="registry", exporter="x", location=ref, run_dir=lab_home, timeout=3
    )
    assert gone.status == "infra_error" and "cannot read the exported cache" in gone.detail


def _tar_with(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def test_local_cache_dir_index_and_a_corrupt_one(tmp_path):
    cache = tmp_path / "cache"
    blobs = cache / "blobs/sha256"
    blobs.mkdir(parents=True)
    layers = [gzip.compress(_tar_with("a.txt")), _empty_tar()]
    for blob in layers:
        (blobs / _sha(blob)[7:]).write_bytes(blob)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(b),
                    "size": len(b),
                }
                for b in layers
            ]
            + [
                {
                    "mediaType": forensics.CACHE_CONFIG_TYPE,
                    "digest": "sha256:" + "0" * 64,
                    "size": 2,
                }
            ],
        }
    ).encode()
    (blobs / _sha(index)[7:]).write_bytes(index)
    (cache / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "digest": _sha(index),
                        "size": len(index),
                    }
                ],
            }
        )
    )
    facts = read_cache(
        run_id="r", cache_type="local", exporter="x", location=str(cache), run_dir=tmp_path
    )
    assert facts.status == "ok" and facts.manifest_digest == _sha(index)
    assert [layer.empty for layer in facts.layers] == [False, True]
    (cache / "index.json").write_text("{not json")
    broken = read_cache(
        run_id="r", cache_type="local", exporter="x", location=str(cache), run_dir=tmp_path
    )
    assert broken.status == "infra_error"


def test_reference_round_trips_through_the_store_shape():
    ref = Reference("export-tree", paths=("a", "b"))
    assert Reference.from_dict(ref.as_dict()) == ref
    assert Reference.from_dict(None) is None
