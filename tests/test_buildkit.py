"""The full reproduction against real moby/buildkit images (skipped where they are absent).

These cannot be pulled on machines without registry access; they run wherever
the images are present locally, e.g. `docker load`ed.
"""

from __future__ import annotations

import json

from repro_lib import lab
from repro_lib.store import Store

from .conftest import CONTAINER_ARGS, run_cli


def _reproduce(lab_home, image, *extra):
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        image,
        *extra,
        "--json",
        home=lab_home,
        timeout=1200,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_affected_version_loses_layers(docker_client, fixture_images, affected_buildkit, lab_home):
    # v0.9.0 loses the layer in about 1 try of 7 at reset every 4 (P(no failure in 40) < 1%)
    code, summary = _reproduce(lab_home, affected_buildkit, "--tries", "40")
    assert code == 1 and summary["failures"] > 0, summary
    assert summary["build_errors"] == 0 and summary["infra_errors"] == 0
    assert all(1 <= p <= 4 for p in summary["failure_positions"])
    with Store(lab_home / "data/raw/trials.sqlite") as store:
        missing = [
            r.missing for r in store.trials(summary["run_id"]) if r.outcome.value == "missing_layer"
        ]
        records = store.trials(summary["run_id"])
        facts = store.batch(summary["run_id"])
    assert all(m == ["repro.txt"] for m in missing)
    # every try says whether it used the cache; every failure names its lost step
    assert all(r.cache_hits is not None and r.cache_steps == 3 for r in records)
    lost = [r for r in records if r.outcome.value == "missing_layer"]
    assert all(r.lost_steps == ["COPY repro.txt /"] for r in lost)
    assert all(r.lost_reference.startswith("export-tree") for r in lost)
    bundles = list((lab_home / "data/runs" / summary["run_id"] / "evidence").glob("trial-*"))
    assert len(bundles) == len(lost)
    assert all((b / "output.tar").is_file() and (b / "what-was-lost.md").is_file() for b in bundles)
    # the exported registry cache: three layers, none of them empty (v0.9.0 drops them)
    assert facts.status == "ok" and facts.layer_count == 3 and facts.empty_layers == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_fixed_version_keeps_every_layer(docker_client, fixture_images, fixed_buildkit, lab_home):
    code, summary = _reproduce(lab_home, fixed_buildkit, "--tries", "40")
    assert code == 0 and summary["failures"] == 0 and summary["tries"] == 40, summary
    assert summary["build_errors"] == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_oci_output_counts_the_lost_layer(
    docker_client, fixture_images, affected_buildkit, lab_home
):
    code, summary = _reproduce(
        lab_home, affected_buildkit, "--tries", "24", "--output", "oci", "--mode", "daemon"
    )
    with Store(lab_home / "data/raw/trials.sqlite") as store:
        records = store.trials(summary["run_id"])
    assert all(r.mode == "daemon" for r in records)
    ok_layers = {r.layers for r in records if r.outcome.value == "ok"}
    assert ok_layers == {3}  # base, RUN, COPY; the empty WORKDIR layer is dropped on export
    lost = [r for r in records if r.outcome.value == "missing_layer"]
    assert all(r.layers == 2 for r in lost)
    assert (code == 1) == bool(lost)
    # daemon mode drives buildkitd with the image's own buildctl from the host
    assert {r.buildctl_via for r in records} == {"host"}
    # the lost layer is named by digest and by the step its history entry records
    assert all(len(r.lost_digests) == 1 and r.lost_steps == ["COPY repro.txt /"] for r in lost)
    assert all(r.lost_reference.startswith("export-oci") for r in lost)


def test_rootful_image_without_privileged(
    docker_client, fixture_images, rootful_buildkit, lab_home
):
    """A rootful image runs where --privileged is refused, with the flags spelled out."""
    code, summary = _reproduce(
        lab_home, rootful_buildkit, "--tries", "20", "--rootful-weak-isolation"
    )
    assert summary["tries"] == 20, summary
    assert summary["build_errors"] == 0 and summary["infra_errors"] == 0, summary
    with Store(lab_home / "data/raw/trials.sqlite") as store:
        records = store.trials(summary["run_id"])
    assert all(r.security["weak_isolation"] and not r.privileged for r in records)
    assert all(r.security["cap_drop"] == ["SYS_RESOURCE"] for r in records)
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
