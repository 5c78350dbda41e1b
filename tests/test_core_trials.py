"""The trial loop with a scripted backend: resets, positions, verdicts, the infra stop.

``ScriptedBackend`` follows the Backend protocol and writes a real tarball per
try (complete, lacking ``repro.txt``, unreadable or absent), or raises the
error a try is scripted to raise. Records go to a real SQLite store. No Docker.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from repro_lib import __version__
from repro_lib.builders import BatchEnv, BuildOutput
from repro_lib.errors import BuildFailed, InfraError, UsageError, VerifyError
from repro_lib.forensics import CacheFacts, Reference
from repro_lib.lab import HostFacts
from repro_lib.records import Outcome
from repro_lib.scenario import Scenario
from repro_lib.store import Store
from repro_lib.trials import (
    MAX_CONSECUTIVE_INFRA_ERRORS,
    TrialContext,
    classify,
    positions_of_failures,
    run_trials,
    validate_counts,
)

EXPECTED = ("repro/", "repro.txt")
DOCKERFILE = "FROM scratch\nCOPY repro.txt /repro.txt\nWORKDIR /repro\n"


def _tar(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
    return buf.getvalue()


def _oci(*layers: bytes) -> bytes:
    """An OCI layout holding ``layers`` (what ``--output type=oci`` writes)."""
    manifest = json.dumps({"layers": [{"digest": _digest(layer)} for layer in layers]}).encode()
    blobs = {_digest(b): b for b in (*layers, manifest)}
    index = json.dumps({"manifests": [{"digest": _digest(manifest)}]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("oci-layout", b"{}"), ("index.json", index)] + [
            ("blobs/sha256/" + d.split(":")[1], b) for d, b in blobs.items()
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


WORKDIR_LAYER = _tar("repro/")
COPY_LAYER = _tar("repro.txt")
#: the cache-export build's layers, as a batch records them for forensics
EXPORT_OCI = Reference(
    kind="export-oci",
    layers=(_digest(WORKDIR_LAYER), _digest(COPY_LAYER)),
    history=(
        {"created_by": "WORKDIR /repro"},
        {"created_by": "COPY repro.txt /repro.txt # buildkit"},
    ),
)
EXPORT_TREE = Reference(kind="export-tree", paths=("repro", "repro.txt", "etc/hostname"))

#: what a scripted try produces: the bytes of its tarball, or how it fails
OUTPUTS = {
    "ok": _tar("./", "./repro/", "./repro.txt"),
    "missing": _tar("./", "./repro/"),
    "oci-missing": _oci(WORKDIR_LAYER),
    "unreadable": b"this is not a tar archive" * 40,
    "empty": b"",
}


class ScriptedBackend:
    """A Backend whose tries follow a script: ``{trial: what}`` (default ``ok``).

    ``what`` is a key of OUTPUTS, ``absent`` (a tarball path that was never
    written), ``none`` (no tarball at all), ``build`` (BuildFailed), ``infra``
    (InfraError from the build) or ``reset`` (InfraError from the reset before it).
    """

    name = "scripted"
    image = "moby/buildkit:v0.9.0-rootless"
    version = "v0.9.0"
    cache_image = "moby/buildkit:v0.9.1-rootless"
    cache_version = "v0.9.1"
    cache_type = "registry"
    mode = "daemonless"
    privileged = True
    security = {"privileged": True}
    buildkit_version = "v0.9.0"
    buildctl_via = "exec"
    features = frozenset()
    cache_types = ("registry",)

    def __init__(self, out_dir: Path, script: dict[int, str] | None = None) -> None:
        self.out_dir = out_dir
        self.script = script or {}
        self.calls: list[str] = []
        self._next = 0  # the trial the loop is about to build (for a scripted reset error)

    def reset(self) -> None:
        self.calls.append("reset")
        if self.script.get(self._next) == "reset":
            self.script[self._next] = "ok"  # only the first reset before it fails
            raise InfraError("state volume gone")

    def build(self, trial: int) -> BuildOutput:
        self.calls.append(f"build {trial}")
        what = self.script.get(trial, "ok")
        if what == "build":
            raise BuildFailed("RUN failed", log_tail="step 3/4: exit code 1")
        if what == "infra":
            raise InfraError("registry not answering")
        (self.out_dir / "logs" / f"trial-{trial:04d}.log").write_text(f"build {trial}\n")
        tarball = self.out_dir / f"out-{trial}.tar"
        if what in OUTPUTS:
            tarball.write_bytes(OUTPUTS[what])
        return BuildOutput(
            tarball=None if what == "none" else tarball,
            log="#5 CACHED\n",
            duration_s=0.1,
            cache_hits=trial % 3,
            cache_steps=3,
            cache_pulled=trial % 2,
            phases={"build": 0.25},
        )

    def daemon_log(self) -> str:
        return "buildkitd: daemon log"


class TrialsAhead:
    """Tells the backend which trial comes next, so a reset can fail before it."""

    def __init__(self, backend: ScriptedBackend, trials) -> None:
        self.backend, self.trials = backend, list(trials)

    def __iter__(self):
        for trial in self.trials:
            self.backend._next = trial
            yield trial


@pytest.fixture
def rig(tmp_path):
    """A batch environment, a scripted backend and an open store in ``tmp_path``."""
    work = tmp_path / "run"
    (work / "logs").mkdir(parents=True)
    healthy: list[str] = []
    client = SimpleNamespace(ping=lambda: healthy.append("ping") or True)
    scenario = Scenario(
        name="handmade", files={"Dockerfile": DOCKERFILE.encode()}, expected=EXPECTED
    )
    env = BatchEnv(
        client=client,
        run_id="run-1",
        scenario=scenario,
        cache_registry=None,
        mirror=None,
        work_dir=work,
    )
    store = Store(tmp_path / "trials.sqlite")
    yield SimpleNamespace(env=env, store=store, work=work, healthy=healthy, path=store.path)
    store.close()


class PlainBackend(ScriptedBackend):
    """A backend with only the protocol's attributes: no buildctl_via, security or daemon log."""

    def __getattribute__(self, name):
        if name in ("daemon_log", "buildctl_via", "security"):
            raise AttributeError(name)
        return super().__getattribute__(name)


class FailingLogBackend(ScriptedBackend):
    def daemon_log(self) -> str:
        raise OSError("container already removed")


def _ctx(reset_freq: int = 1, **kw) -> TrialContext:
    facts = HostFacts(engine_version="20.10.24", kernel="6.1.0", host="box", cpus=2)
    return TrialContext(
        run_id="run-1", reset_freq=reset_freq, scenario="handmade", facts=facts, **kw
    )


def _run(rig, script=None, trials=range(1, 4), reset_freq=1, *, ctx=None, backend=None, **kw):
    backend = (backend or ScriptedBackend)(rig.work, script)
    ctx = ctx or _ctx(reset_freq)
    state = run_trials(backend, rig.env, rig.store, ctx, TrialsAhead(backend, trials), **kw)
    return backend, state


def test_counts_of_one_are_enough():
    validate_counts(1, 1)
    with pytest.raises(UsageError, match=r"--tries must be at least 1 \(got 0\)"):
        validate_counts(0, 1)
    with pytest.raises(UsageError, match=r"--reset-freq must be at least 1 \(got 0\)"):
        validate_counts(1, 0)


# the reset schedule and positions ------------------------------------------------
@pytest.mark.parametrize(
    "reset_freq,resets,since_reset,reset_index",
    [
        (1, [1, 2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5, 6]),
        (3, [1, 4, 7], [1, 2, 3, 1, 2, 3, 1], [0, 0, 0, 1, 1, 1, 2]),
        (8, [1], [1, 2, 3, 4, 5, 6, 7], [0] * 7),
    ],
)
def test_resets_follow_the_schedule_and_positions_count_from_one(
    rig, reset_freq, resets, since_reset, reset_index
):
    backend, state = _run(rig, trials=range(1, 8), reset_freq=reset_freq)
    built_after_reset = [
        int(call.split()[1])
        for before, call in zip(["start", *backend.calls], backend.calls, strict=False)
        if before == "reset"
    ]
    assert built_after_reset == resets
    assert backend.calls.count("reset") == len(resets)
    records = rig.store.trials("run-1")
    assert [r.trial for r in records] == list(range(1, 8))
    assert [r.since_reset for r in records] == since_reset
    assert [r.reset_index for r in records] == reset_index
    assert [r.since_reset for r in state.records] == since_reset
    assert (state.since_reset, state.reset_index) == (since_reset[-1], reset_index[-1])


def test_a_resumed_batch_starts_fresh_whatever_the_schedule(rig):
    backend, _ = _run(rig, trials=[5, 6, 7, 8], reset_freq=3)
    assert backend.calls == ["reset", "build 5", "build 6", "reset", "build 7", "build 8"]
    records = rig.store.trials("run-1")
    assert [r.since_reset for r in records] == [1, 2, 1, 2]
    assert [r.reset_index for r in records] == [0, 0, 1, 1]


def test_positions_of_failures_are_the_since_reset_of_missing_layers(rig):
    _run(rig, {2: "missing", 3: "build", 6: "missing"}, trials=range(1, 7), reset_freq=3)
    records = rig.store.trials("run-1")
    assert positions_of_failures(records) == [2, 3]


# classification --------------------------------------------------------------
@pytest.mark.parametrize(
    "what,outcome,detail",
    [
        ("ok", Outcome.OK, "all expected paths present (3 entries, kind=rootfs)"),
        ("missing", Outcome.MISSING_LAYER, "missing: repro.txt"),
        ("unreadable", Outcome.BUILD_ERROR, "out-1.tar is not a readable tar archive"),
        ("empty", Outcome.BUILD_ERROR, "out-1.tar is empty (0 bytes)"),
        ("absent", Outcome.BUILD_ERROR, "out-1.tar was not produced"),
        ("none", Outcome.BUILD_ERROR, "the build produced no output tarball"),
        ("build", Outcome.BUILD_ERROR, "RUN failed\nstep 3/4: exit code 1"),
        ("infra", Outcome.INFRA_ERROR, "registry not answering"),
    ],
)
def test_each_kind_of_try_gets_its_outcome(rig, what, outcome, detail):
    _run(rig, {1: what}, trials=[1])
    (record,) = rig.store.trials("run-1")
    assert record.outcome is outcome
    assert detail in record.detail
    assert record.missing == (["repro.txt"] if outcome is Outcome.MISSING_LAYER else [])


def test_classify_never_calls_unreadable_output_ok_or_missing(tmp_path):
    for what in ("unreadable", "empty"):
        (tmp_path / "out.tar").write_bytes(OUTPUTS[what])
        output = BuildOutput(tarball=tmp_path / "out.tar", log="", duration_s=0)
        assert classify(output, EXPECTED)[0] is Outcome.BUILD_ERROR
    assert classify(None, EXPECTED)[:3] == (
        Outcome.BUILD_ERROR,
        [],
        "the build produced no output tarball",
    )
    absent = BuildOutput(tarball=tmp_path / "never.tar", log="", duration_s=0)
    assert classify(absent, EXPECTED)[0] is Outcome.BUILD_ERROR
    (tmp_path / "out.tar").write_bytes(OUTPUTS["missing"])
    outcome, missing, detail, extra = classify(
        BuildOutput(tarball=tmp_path / "out.tar", log="", duration_s=0), EXPECTED
    )
    assert (outcome, missing, detail) == (
        Outcome.MISSING_LAYER,
        ["repro.txt"],
        "missing: repro.txt",
    )
    assert extra == {"layers": None, "layer_digests": []}


def test_a_record_carries_the_backend_context_and_output(rig):
    backend, _ = _run(rig, trials=[4], reset_freq=2)
    (record,) = rig.store.trials("run-1")
    assert (record.run_id, record.trial, record.backend) == ("run-1", 4, "scripted")
    assert (record.image, record.version) == (backend.image, backend.version)
    assert (record.cache_image, record.cache_version) == (backend.cache_image, "v0.9.1")
    assert (record.cache_type, record.mode, record.reset_freq) == ("registry", "daemonless", 2)
    assert (record.lane, record.scenario, record.attempt) == (0, "handmade", 1)
    assert (record.sweep_id, record.cell) == (None, None)
    assert (record.engine_version, record.kernel) == ("20.10.24", "6.1.0")
    assert (record.host, record.cpus, record.package_version) == ("box", 2, __version__)
    assert (record.buildkit_version, record.privileged) == ("v0.9.0", True)
    assert (record.buildctl_via, record.security) == ("exec", {"privileged": True})
    assert (record.cache_hits, record.cache_steps, record.cache_pulled) == (1, 3, 0)
    assert record.log_path == "logs/trial-0004.log"
    assert record.layers is None and record.layer_digests == []
    assert set(record.phases) == {"build", "verify", "reset"}
    assert record.phases["build"] == 0.25
    assert 0 <= record.phases["verify"] < 5 and 0 <= record.phases["reset"] < 5
    assert 0 <= record.duration_s < 5
    assert record.started_at.endswith("+00:00")
    assert (record.lost_steps, record.evidence_path) == ([], "")


def test_a_try_without_a_reset_records_no_reset_phase(rig):
    _run(rig, trials=[1, 2], reset_freq=2)
    first, second = rig.store.trials("run-1")
    assert "reset" in first.phases and "reset" not in second.phases


def test_a_missing_layer_keeps_its_evidence(rig):
    (rig.work / "cache").mkdir()
    (rig.work / "cache" / "manifest.json").write_text("{}")
    cache = CacheFacts("run-1", "registry", "v0.9.1", "reg/x", manifest_path="cache/manifest.json")
    ctx = _ctx(cache=cache, sweep_id="s", cell="c", attempt=2, lane=1)
    _, state = _run(rig, {2: "missing"}, trials=[1, 2], ctx=ctx)
    ok, failed = rig.store.trials("run-1")
    assert failed.evidence_path == "evidence/trial-0002"
    bundle = rig.work / failed.evidence_path
    assert (bundle / "output.tar").is_file()  # the failing output, moved into the bundle
    assert (bundle / "buildkitd.log").read_text() == "buildkitd: daemon log"
    assert (bundle / "build.log").read_text() == "build 2\n"
    assert (bundle / "cache-manifest.json").read_text() == "{}"
    summary = (bundle / "what-was-lost.md").read_text()
    assert "# What trial 2 lost" in summary and "## The imported cache" in summary
    assert failed.lost_steps == ["COPY repro.txt /repro.txt"]
    assert failed.lost_reference.startswith("dockerfile:")
    assert state.records[0].evidence_path == "" and state.records[0].lost_reference == ""
    assert not (rig.work / "evidence" / "trial-0001").exists()
    for record in (ok, failed):
        assert (record.sweep_id, record.cell, record.attempt, record.lane) == ("s", "c", 2, 1)
    # an output nobody needs is not kept
    assert not (rig.work / "out-1.tar").exists()


def test_an_oci_output_names_the_lost_layer_and_its_step(rig):
    _, state = _run(rig, {1: "oci-missing"}, trials=[1], ctx=_ctx(reference=EXPORT_OCI))
    (record,) = state.records
    assert record.outcome is Outcome.MISSING_LAYER
    assert (record.layers, record.layer_digests) == (1, [_digest(WORKDIR_LAYER)])
    assert record.lost_digests == [_digest(COPY_LAYER)]
    assert record.lost_steps == ["COPY repro.txt /repro.txt"]
    assert record.lost_reference.startswith("export-oci:")


@pytest.mark.parametrize(
    "reference,judged", [(EXPORT_TREE, "export-tree:"), (EXPORT_OCI, "dockerfile:")]
)
def test_a_rootfs_output_is_judged_against_the_reference_it_can_use(rig, reference, judged):
    _, state = _run(rig, {1: "missing"}, trials=[1], ctx=_ctx(reference=reference))
    (record,) = state.records
    assert record.lost_reference.startswith(judged)
    assert (record.lost_digests, record.layers, record.layer_digests) == ([], None, [])


def test_a_backend_without_the_optional_attributes(rig):
    _, state = _run(rig, {1: "missing"}, trials=[1], backend=PlainBackend)
    (record,) = state.records
    assert (record.buildctl_via, record.security) == ("", {})
    assert not (rig.work / record.evidence_path / "buildkitd.log").exists()


def test_an_unreadable_daemon_log_is_noted_in_the_evidence(rig):
    _, state = _run(rig, {1: "missing"}, trials=[1], backend=FailingLogBackend)
    log = rig.work / state.records[0].evidence_path / "buildkitd.log"
    assert log.read_text() == "(daemon log unavailable: container already removed)"


def test_durations_and_phases_are_kept_to_the_tenth_of_a_millisecond(rig, monkeypatch):
    ticks = iter(range(1, 100))
    monkeypatch.setattr(
        "repro_lib.trials.time", SimpleNamespace(monotonic=lambda: next(ticks) * 0.123456)
    )
    _, state = _run(rig, trials=[1])
    (record,) = state.records
    # reset (1 tick), build, verify (1 tick), so the try lasted 3 ticks from its start
    assert record.duration_s == 0.3704
    assert record.phases == {"build": 0.25, "verify": 0.1235, "reset": 0.1235}


def test_outputs_are_kept_when_asked(rig):
    _run(rig, trials=[1], keep_outputs=True)
    assert (rig.work / "out-1.tar").is_file()


def test_a_long_detail_is_cut_to_4000_characters(rig, monkeypatch):
    def long_complaint(*args):
        raise VerifyError("x" * 5000)

    monkeypatch.setattr("repro_lib.trials.verify_tarball", long_complaint)
    _run(rig, trials=[1])
    (record,) = rig.store.trials("run-1")
    assert record.detail == "x" * 4000


# the infra-error stop ------------------------------------------------------------
def test_three_infra_errors_in_a_row_stop_the_batch(rig):
    script = {2: "infra", 3: "infra", 4: "infra"}
    with pytest.raises(InfraError, match="3 infrastructure errors in a row; last: registry"):
        _run(rig, script, trials=range(1, 8), reset_freq=8)
    outcomes = [r.outcome for r in rig.store.trials("run-1")]
    assert outcomes == [Outcome.OK] + [Outcome.INFRA_ERROR] * 3
    assert rig.healthy == ["ping", "ping"]  # waited after the first two, not the third
    assert MAX_CONSECUTIVE_INFRA_ERRORS == 3


def test_infra_errors_apart_do_not_stop_the_batch(rig):
    script = {1: "infra", 2: "infra", 4: "infra", 5: "infra", 7: "infra"}
    backend, state = _run(rig, script, trials=range(1, 9), reset_freq=8)
    outcomes = [r.outcome.value for r in rig.store.trials("run-1")]
    assert outcomes.count("infra_error") == 5 and len(outcomes) == 8
    assert state.consecutive_infra == 0
    # after an infra error the next try starts fresh; otherwise the schedule holds
    assert backend.calls.count("reset") == 1 + 5
    assert [r.since_reset for r in rig.store.trials("run-1")] == [1, 1, 1, 2, 1, 1, 2, 1]


def test_a_failed_reset_is_an_infra_error_and_the_next_try_resets(rig):
    seen = []
    backend, state = _run(rig, {2: "reset"}, trials=[1, 2, 3], on_record=seen.append)
    assert seen == state.records
    records = rig.store.trials("run-1")
    assert records[1].started_at.endswith("+00:00")
    assert (state.records[1].log_path, state.records[1].evidence_path) == ("", "")
    assert [r.outcome for r in records] == [Outcome.OK, Outcome.INFRA_ERROR, Outcome.OK]
    assert records[1].detail == "reset failed: state volume gone"
    assert records[1].duration_s == 0.0 and records[1].phases == {}
    assert backend.calls == ["reset", "build 1", "reset", "reset", "build 3"]
    assert rig.healthy == ["ping"]


def test_failed_resets_count_toward_the_stop(rig):
    with pytest.raises(InfraError, match="3 infrastructure errors in a row; last: state volume"):
        _run(rig, {1: "infra", 2: "infra", 3: "reset"}, trials=range(1, 6))
    assert len(rig.store.trials("run-1")) == 3


# stopping early and watching records -----------------------------------------
def test_stop_on_failure_ends_at_the_first_missing_layer(rig):
    _run(rig, {3: "missing", 5: "missing"}, trials=range(1, 8), stop_on_failure=True)
    assert sorted(rig.store.trial_numbers("run-1")) == [1, 2, 3]


def test_should_stop_sees_the_records_so_far_and_on_record_each_one(rig):
    seen: list[int] = []

    def enough(records):
        return len(records) == 2

    _, state = _run(
        rig, trials=range(1, 6), should_stop=enough, on_record=lambda r: seen.append(r.trial)
    )
    assert seen == [1, 2] and [r.trial for r in state.records] == [1, 2]


def test_each_record_is_in_the_store_when_on_record_sees_it(rig):
    counts: list[int] = []

    def count(record):
        with sqlite3.connect(rig.path) as other:
            counts.append(other.execute("SELECT count(*) FROM trials").fetchone()[0])

    _run(rig, {2: "infra"}, trials=[1, 2, 3], on_record=count)
    assert counts == [1, 2, 3]


def test_a_try_that_errs_after_the_users_stop_is_not_recorded(rig):
    # Ctrl-C reaches the build's own processes too: the try it cut short is no evidence
    # of anything, and a resume runs it again
    backend = ScriptedBackend(rig.work, {2: "build"})
    run_trials(
        backend,
        rig.env,
        rig.store,
        _ctx(),
        TrialsAhead(backend, [1, 2, 3]),
        interrupted=lambda: "build 2" in backend.calls,
    )
    assert [r.trial for r in rig.store.trials("run-1")] == [1]
    assert "build 3" not in backend.calls
    assert rig.store.trial_numbers("run-1") == {1}


def test_a_stop_never_drops_a_try_that_finished(rig):
    _run(rig, {2: "missing"}, interrupted=lambda: True)
    outcomes = [r.outcome for r in rig.store.trials("run-1")]
    assert outcomes == [Outcome.OK, Outcome.MISSING_LAYER, Outcome.OK]
