"""The CLI on bad input: one line, exit 2, nothing left behind; and its help."""

from __future__ import annotations

import contextlib
import re
import sqlite3

import pytest

from repro_lib import lab

from .conftest import CONTAINER_ARGS, ENGINE_ARGS, run_cli


def _scenario_without(tmp_path, *, dockerfile=True, expected=True, expected_text="repro.txt\n"):
    d = tmp_path / "scenario"
    d.mkdir()
    if dockerfile:
        (d / "Dockerfile").write_text("FROM scratch\nCOPY repro.txt /\n")
    if expected:
        (d / "expected.txt").write_text(expected_text)
    (d / "repro.txt").write_text("x")
    return str(d)


BAD_INPUTS = [
    # (id, args builder, message pattern)
    ("tries-zero", lambda t: ["--tries", "0"], r"tries.*at least 1"),
    ("reset-freq-zero", lambda t: ["--reset-freq", "0"], r"reset-freq.*at least 1"),
    ("reset-freq-negative", lambda t: ["--reset-freq", "-3"], r"reset-freq.*at least 1"),
    ("tries-not-a-number", lambda t: ["--tries", "many"], r"tries.*not a valid integer"),
    ("unknown-cache", lambda t: ["--cache", "s3"], r"cache"),
    ("unknown-backend", lambda t: ["--backend", "podman"], r"backend"),
    ("scenario-missing", lambda t: ["--scenario", str(t / "nope")], r"does not exist"),
    (
        "scenario-no-dockerfile",
        lambda t: ["--scenario", _scenario_without(t, dockerfile=False)],
        r"no Dockerfile",
    ),
    (
        "scenario-no-expected",
        lambda t: ["--scenario", _scenario_without(t, expected=False)],
        r"no expected\.txt",
    ),
    (
        "scenario-empty-expected",
        lambda t: ["--scenario", _scenario_without(t, expected_text="# none\n")],
        r"names no expected paths",
    ),
    ("skip-create-cache-without-ref", lambda t: ["--skip-create-cache"], r"--cache-ref"),
    ("engine-with-local-cache", lambda t: ["--backend", "engine", "--cache", "local"], r"inline"),
    ("inline-with-container", lambda t: ["--cache", "inline"], r"inline.*engine"),
    ("cap-add-not-a-name", lambda t: ["--cap-add", "SYS ADMIN"], r"not a capability name"),
    (
        "weak-isolation-with-engine",
        lambda t: ["--backend", "engine", "--rootful-weak-isolation"],
        r"engine backend does not run",
    ),
    (
        "weak-isolation-with-privileged",
        lambda t: ["--privileged", "--rootful-weak-isolation"],
        r"replaces --privileged",
    ),
    (
        "engine-unreachable",
        lambda t: ["--engine-host", f"unix://{t}/absent.sock"],
        r"not reachable",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    _, build_args, pattern = case
    proc = run_cli("reproduce", *build_args(tmp_path), home=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert re.search(pattern, proc.stderr), proc.stderr
    assert len(lines) <= 3  # click's usage errors print "Usage:" + a hint + the error
    assert "Traceback" not in proc.stderr


def test_absent_image_offline_is_one_line_exit_2(docker_client, fixture_images, lab_home):
    proc = run_cli(
        "reproduce", *CONTAINER_ARGS, "--image", "moby/buildkit:v0.0.0-nosuch", home=lab_home
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "error" in line
    ]
    assert "moby/buildkit:v0.0.0-nosuch is not present locally" in proc.stderr
    assert "docker load" in proc.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_absent_registry_image_is_one_line_exit_2(docker_client, fixture_images, lab_home):
    proc = run_cli("reproduce", *ENGINE_ARGS[:-1], "repro-lib-test/none:1", home=lab_home)
    assert proc.returncode == 2, proc.stderr
    assert "registry image repro-lib-test/none:1 is not present locally" in proc.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_corrupt_store_is_one_line_exit_2(docker_client, fixture_images, lab_home):
    store = lab_home / "corrupt.sqlite"
    store.write_bytes(b"this is not a database" * 100)
    proc = run_cli("reproduce", *ENGINE_ARGS, "--store", str(store), home=lab_home)
    assert proc.returncode == 2, proc.stderr
    assert "cannot open results store" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert store.read_bytes().startswith(b"this is not a database")  # left as it was


def test_help_documents_every_option():
    proc = run_cli("reproduce", "--help", home=__import__("pathlib").Path("/tmp"))
    assert proc.returncode == 0
    for option in (
        "--image",
        "--cache-image",
        "--tries",
        "--reset-freq",
        "--cache",
        "--backend",
        "--mode",
        "--offline",
        "--no-cleanup",
        "--skip-create-cache",
        "--cache-ref",
        "--cache-dir",
        "--skip-tests",
        "--stop-on-failure",
        "--scenario",
        "--base-image",
        "--registry-image",
        "--privileged",
        "--security-opt",
        "--cap-add",
        "--cap-drop",
        "--rootful-weak-isolation",
        "--allow-prune",
        "--json",
    ):
        assert option in proc.stdout
    # the option that lowers isolation says so where users choose it
    assert re.search(r"--rootful-weak-isolation\s+WEAKENS\s+ISOLATION", proc.stdout), proc.stdout


def test_stop_on_failure_and_no_cleanup_then_reuse_the_cache(
    docker_client, fixture_images, docker_cli, lab_home
):
    """--no-cleanup keeps the cache registry; --skip-create-cache --cache-ref reuses it."""
    import json

    proc = run_cli(
        "reproduce", *ENGINE_ARGS, "--tries", "2", "--no-cleanup", "--json", home=lab_home
    )
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = first["kept"]["cache_ref"]
    assert ref and first["kept"]["cache_registry"]
    assert lab.leftovers(docker_client, first["run_id"])["containers"]
    try:
        proc = run_cli(
            "reproduce",
            *ENGINE_ARGS,
            "--tries",
            "3",
            "--skip-create-cache",
            "--cache-ref",
            ref,
            "--json",
            home=lab_home,
        )
        assert proc.returncode == 0, proc.stderr
        second = json.loads(proc.stdout.strip().splitlines()[-1])
        assert second["tries"] == 3
        with contextlib.closing(sqlite3.connect(lab_home / "data/raw/trials.sqlite")) as db:
            hits = [
                r[0]
                for r in db.execute(
                    "SELECT cache_hits FROM trials WHERE run_id = ?", (second["run_id"],)
                )
            ]
        assert hits == [3, 3, 3]  # the reused cache served every step
    finally:
        proc = run_cli("clean", "--run", first["run_id"], home=lab_home)
        assert proc.returncode == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


SWEEP_BAD_INPUTS = [
    (
        "plan-malformed",
        lambda t: ["--plan", _write(t / "p.toml", "versions = [v0.9.0")],
        r"not valid TOML",
    ),
    (
        "plan-unknown-axis",
        lambda t: ["--plan", _write(t / "p.toml", 'versions = ["v0.9.0"]\ncolour = 1\n')],
        r"unknown plan key colour",
    ),
    ("plan-missing", lambda t: ["--plan", str(t / "none.toml")], r"does not exist"),
    ("versions-bad", lambda t: ["--versions", "0.9"], r"neither vX.Y.Z nor an image"),
    ("versions-duplicate", lambda t: ["--versions", "v0.9.0,v0.9.0"], r"more than once"),
    ("reset-freq-zero", lambda t: ["--versions", "v0.9.0", "--reset-freq", "0"], r"at least 1"),
    ("tries-zero", lambda t: ["--versions", "v0.9.0", "--tries", "0"], r"tries must be at least 1"),
    ("lanes-zero", lambda t: ["--versions", "v0.9.0", "--lanes", "0"], r"lanes must be at least 1"),
    ("no-versions", lambda t: [], r"--versions is required"),
    (
        "resume-unknown",
        lambda t: ["--resume", "s-none", "--store", _write(t / "s.sqlite", "")],
        r"no sweep 's-none'",
    ),
]


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", SWEEP_BAD_INPUTS, ids=[c[0] for c in SWEEP_BAD_INPUTS])
def test_sweep_bad_input_is_one_line_and_exit_2(case, tmp_path):
    _, build_args, pattern = case
    proc = run_cli("sweep", *build_args(tmp_path), home=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert re.search(pattern, proc.stderr), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


VERSIONS = ["--versions", "v0,v1,v2", "--good", "v0", "--bad", "v2"]

BISECT_VERSION_BAD_INPUTS = [
    ("good-not-listed", ["--good", "v9"], r"--good 'v9' is not in --versions"),
    ("good-equals-bad", ["--good", "v2"], r"--good and --bad must differ"),
    ("no-bad", ["--bad", None], r"--versions needs --good and --bad"),
    ("listed-twice", ["--versions", "v0,v1,v1,v2"], r"more than once"),
    ("direction", ["--direction", "fixed"], r"--direction applies to commit mode"),
    ("tries-and-cycles", ["--tries", "8", "--cycles-per-probe", "2"], r"both size a probe"),
    ("neither-mode", ["--versions", None], r"needs --versions .* or --repo"),
    (
        "resume-with-tries",
        ["--versions", None, "--good", None, "--bad", None, "--resume", "v-1", "--tries", "8"],
        r"--resume takes.*--tries cannot",
    ),
]


def _bisect_args(changes: list[str | None]) -> list[str]:
    args = dict(zip(VERSIONS[::2], VERSIONS[1::2], strict=True))
    args.update(zip(changes[::2], changes[1::2], strict=True))
    return [a for name, value in args.items() if value is not None for a in (name, value)]


@pytest.mark.parametrize(
    "case", BISECT_VERSION_BAD_INPUTS, ids=[c[0] for c in BISECT_VERSION_BAD_INPUTS]
)
def test_bisect_version_bad_input_is_one_line_and_exit_2(case, tmp_path):
    _, changes, pattern = case
    # an engine that is not there: every check comes before any engine contact
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    argv = _bisect_args(changes)
    proc = run_cli("bisect", *argv, *ENGINE_ARGS, home=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repro-lib: error:"), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "data").exists()


def test_bisect_versions_keeps_the_old_probe_options_with_a_warning(tmp_path):
    # --tries sized a deflaked probe: now whole reset cycles per probe; --max-rate has
    # no part in the search. Both warn and go on (to the missing engine here).
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    old = ["--tries", "10", "--reset-freq", "4", "--max-rate", "0.25"]
    proc = run_cli("bisect", *VERSIONS, *old, *ENGINE_ARGS, home=tmp_path, env=env, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 3, proc.stderr
    assert "--tries 10 is taken as --cycles-per-probe 3 (12 tries" in lines[0]
    assert lines[1].startswith("repro-lib: warning: --max-rate is ignored")
    assert lines[2].startswith("repro-lib: error:") and "--tries" not in lines[2]
    assert not (tmp_path / "data").exists()


def test_bisect_help_explains_both_modes_and_the_list_direction():
    proc = run_cli("bisect", "--help", home=__import__("pathlib").Path("/tmp"))
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Version mode (--versions)" in text and "Commit mode (--repo)" in text
    assert "When --bad comes first in the list the search looks for the first version" in text
    assert "--tries" in text and "deprecated" in text


def test_sweep_with_an_absent_version_offline(docker_client, fixture_images, lab_home):
    proc = run_cli("sweep", *CONTAINER_ARGS, "--versions", "v0.0.1", home=lab_home)
    assert proc.returncode == 2
    assert "moby/buildkit:v0.0.1-rootless is not present locally" in proc.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_report_command_on_a_real_engine_store(docker_client, fixture_images, docker_cli, lab_home):
    import csv

    proc = run_cli("reproduce", *ENGINE_ARGS, "--tries", "4", "--reset-freq", "2", home=lab_home)
    assert proc.returncode == 0, proc.stderr
    out = lab_home / "report"
    proc = run_cli("report", "--out", str(out), home=lab_home)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "repro-lib reproduce --backend engine" in text  # the command that reproduces it
    assert "engine-" in text and "| Cell |" in text
    for png in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (out / png).stat().st_size > 1000
    with (out / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_report_of_a_missing_store_is_one_line(tmp_path):
    proc = run_cli("report", "--store", str(tmp_path / "none.sqlite"), home=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_bench_runs_on_the_engine_backend(docker_client, fixture_images, docker_cli, lab_home):
    proc = run_cli(
        "bench", *ENGINE_ARGS, "--tries", "8", "--lanes", "2", "--json", home=lab_home, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert [r["ratio"] for r in rows][0] == 1.0 and len(rows) == 2
    assert all(r["trials"] >= 8 and r["per_minute"] > 0 for r in rows)  # 3 batches at least
    # CPU accounting and the ceiling, and at least three batches per configuration
    for r in rows:
        assert r["cpu_s_per_try"] > 0 and r["ceiling_per_minute"] > r["per_minute"] * 0.5
        assert 0 < r["ceiling_fraction"] <= 1.5 and r["ceiling_per_minute"] == pytest.approx(
            (__import__("os").cpu_count() * 60) / r["cpu_s_per_try"], rel=0.01
        )
        assert r["batches"] >= 3 and "batches_agree_p" in r
        assert set(r["cpu_split"]) == {
            "lab process and its children",
            "dockerd + containerd",
            "containers (BuildKit, runc, registries) and the rest",
        }
        assert sum(r["cpu_split"].values()) == pytest.approx(r["cpu_s_per_try"], rel=0.05)
    assert "CPU-s/try" in proc.stderr and "of ceiling" in proc.stderr
    assert "× baseline" in proc.stderr and "Mean seconds per try" in proc.stderr
    assert all("build" in r["phases"] and "verify" in r["phases"] for r in rows)
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
