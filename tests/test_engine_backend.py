"""Real batches on the engine's built-in BuildKit: records, reset schedule, outcomes."""

from __future__ import annotations

import json

import pytest

from repro_lib import lab
from repro_lib.batch import BatchOptions, LabSession, run_batch
from repro_lib.config import Paths
from repro_lib.errors import PruneRefused
from repro_lib.records import Outcome
from repro_lib.store import Store

from .conftest import ENGINE_ARGS, run_cli


def _options(fixture_images, **overrides) -> BatchOptions:
    values = dict(
        backend="engine",
        cache="inline",
        offline=True,
        allow_prune=True,
        base_image=fixture_images["base"],
        registry_image=fixture_images["registry"],
    )
    values.update(overrides)
    return BatchOptions(**values)


def _run(docker_client, lab_home, options, run_id=None):
    run_id = run_id or lab.new_run_id("t")
    paths = Paths.from_env()
    with Store(paths.store) as store:
        with LabSession(
            docker_client,
            run_id,
            paths=paths,
            offline=True,
            registry_image=options.registry_image,
            need_mirror=False,
        ) as session:
            summary = run_batch(session, options, store, run_id=run_id)
        return summary, store.trials(run_id)


def test_engine_batch_records_every_try_and_resets_on_schedule(
    docker_client, fixture_images, docker_cli, lab_home
):
    options = _options(fixture_images, tries=8, reset_freq=3)
    summary, records = _run(docker_client, lab_home, options)
    assert [r.trial for r in records] == list(range(1, 9))
    assert [r.since_reset for r in records] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert [r.reset_index for r in records] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert all(r.outcome is Outcome.OK for r in records), [r.detail for r in records]
    assert all(r.backend == "engine" and r.cache_type == "inline" for r in records)
    assert all(r.version.startswith("engine-") and r.engine_version for r in records)
    # Every step came from the cache ...
    assert all(r.cache_hits == r.cache_steps == 3 for r in records)
    # ... and only right after a reset did it have to come from the registry.
    pulled = [r.since_reset for r in records if r.cache_pulled]
    assert pulled == [1, 1, 1]
    assert summary.tries == 8 and summary.failures == 0 and summary.rate == 0.0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_a_tarball_without_the_expected_file_is_never_ok(
    docker_client, fixture_images, docker_cli, lab_home, monkeypatch
):
    from . import controlled_backend  # noqa: F401  (registers engine-dropping)

    monkeypatch.setenv("REPRO_LIB_DROP_TRIALS", "2,5")
    options = _options(fixture_images, backend="engine-dropping", tries=6, reset_freq=2)
    summary, records = _run(docker_client, lab_home, options)
    outcomes = {r.trial: r.outcome for r in records}
    assert outcomes == {
        1: Outcome.OK,
        2: Outcome.MISSING_LAYER,
        3: Outcome.OK,
        4: Outcome.OK,
        5: Outcome.MISSING_LAYER,
        6: Outcome.OK,
    }
    assert [r.missing for r in records if r.outcome is Outcome.MISSING_LAYER] == [
        ["repro.txt"],
        ["repro.txt"],
    ]
    assert summary.failures == 2
    assert summary.failure_positions == [2, 1]
    # each failure names its lost step; the engine's export build leaves an image, not a
    # tarball, so the missing paths are mapped through the Dockerfile
    failed = [r for r in records if r.outcome is Outcome.MISSING_LAYER]
    assert [r.lost_steps for r in failed] == [["COPY repro.txt /"]] * 2
    assert all(r.lost_reference.startswith("dockerfile") for r in failed)
    assert all(r.lost_digests == [] for r in failed)  # tar output has no layers to name
    assert [r.evidence_path for r in failed] == ["evidence/trial-0002", "evidence/trial-0005"]
    assert all(r.lost_steps == [] and r.evidence_path == "" for r in records if r not in failed)
    # an evidence bundle per failure; the other outputs are removed
    run_dir = Paths.from_env().run_dir(summary.run_id)
    bundle = run_dir / "evidence/trial-0002"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "build.log",
        "cache-manifest.json",
        "output.tar",
        "what-was-lost.md",
    ]
    assert sorted(p.name for p in run_dir.rglob("*.tar")) == ["output.tar", "output.tar"]
    lost = (bundle / "what-was-lost.md").read_text()
    assert "`COPY repro.txt /`" in lost and "repro.txt" in lost
    # the exported inline cache, read from the registry once for the batch
    from repro_lib.store import Store

    with Store(Paths.from_env().store) as store:
        facts = store.batch(summary.run_id)
    assert facts.status == "ok" and facts.cache_type == "inline"
    assert facts.layer_count >= 3 and facts.manifest_digest.startswith("sha256:")
    assert (run_dir / facts.manifest_path).is_file()
    # the report says what was lost; `repro-lib evidence` prints a bundle
    report = run_cli("report", "--run", summary.run_id, "--out", "rep", home=lab_home)
    assert report.returncode == 0, report.stderr
    text = (lab_home / "rep/report.md").read_text()
    section = text[text.index("## What was lost") :]
    assert "| `COPY repro.txt /` | 2 |" in section
    assert f"manifest `{facts.manifest_digest}`" in section
    assert "`what-was-lost.md`" in section
    shown = run_cli("evidence", summary.run_id, "2", home=lab_home)
    assert shown.returncode == 0, shown.stderr
    assert "# What trial 2 lost" in shown.stdout and "COPY repro.txt /" in shown.stdout
    missing = run_cli("evidence", "r-nope", home=lab_home)
    assert missing.returncode == 2 and "no run 'r-nope'" in missing.stderr


def test_pruning_an_engine_the_lab_did_not_start_needs_consent(
    docker_client, fixture_images, docker_cli, lab_home
):
    facts = lab.HostFacts.of(docker_client)
    if any(label.startswith("repro-lib.engine=") for label in facts.engine_labels):
        pytest.skip("this engine was started by the lab; refusal applies to other engines")
    cached = _some_build_cache(docker_cli, lab_home, fixture_images["base"])
    with pytest.raises(PruneRefused, match="not started by the lab"):
        _run(docker_client, lab_home, _options(fixture_images, allow_prune=False, tries=1))
    args = [a for a in ENGINE_ARGS if a != "--allow-prune"]
    proc = run_cli("reproduce", *args, "--tries", "1", home=lab_home)
    assert proc.returncode == 2
    assert "--allow-prune" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    # refused means untouched: the user's build cache is still there
    assert cached <= _build_cache_ids(docker_client)
    docker_client.api.prune_builds(all=True)  # this test's own cache


def _build_cache_ids(client) -> set[str]:
    return {entry["ID"] for entry in client.df().get("BuildCache") or []}


def _some_build_cache(docker_cli, home, base) -> set[str]:
    """Build something with BuildKit so the engine holds a cache worth protecting."""
    import os
    import subprocess

    ctx = home / "user-build"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo user > /user.txt\n")
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    proc = subprocess.run(
        [docker_cli, "build", "--network", "host", "-o", f"type=tar,dest={ctx}/out.tar", str(ctx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = lab.connect()
    ids = _build_cache_ids(client)
    assert ids, "the build left no cache to protect"
    return ids


def test_reproduce_engine_twenty_tries_cli(docker_client, fixture_images, docker_cli, lab_home):
    """The issue's 'done when': 20 real builds, 20 rows with cache hits, the summary as JSON."""
    proc = run_cli(
        "reproduce", *ENGINE_ARGS, "--tries", "20", "--reset-freq", "4", "--json", home=lab_home
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "run_id",
        "image",
        "cache_image",
        "cache_type",
        "reset_freq",
        "tries",
        "failures",
        "build_errors",
        "infra_errors",
        "rate",
        "ci_low",
        "ci_high",
        "failure_positions",
    ):
        assert key in summary
    assert (
        summary["tries"] == 20 and summary["cache_type"] == "inline" and summary["reset_freq"] == 4
    )
    with Store(lab_home / "data/raw/trials.sqlite") as store:
        records = store.trials(summary["run_id"])
    assert len(records) == 20
    assert all(r.cache_hits and r.cache_hits > 0 for r in records)
    assert sum(1 for r in records if r.cache_pulled) == 5
    assert "failure rate" in proc.stderr  # the human summary goes to stderr with --json
