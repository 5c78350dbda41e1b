"""The public test.sh's environment variables as `repro-lib reproduce` defaults.

Parsing and precedence are checked on the real CLI with the batch replaced by a
recorder (no engine needed); bad values through a real subprocess (exit status
and stderr as a user sees them); what each variable changes in the recorded
trials through real batches: the engine backend on the test engine, and the
container backend where a real BuildKit image is present.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from click.testing import CliRunner

from repro_lib import batch, cli, lab, testsh_env
from repro_lib.store import Store

from .conftest import ENGINE_ARGS, run_cli


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Run `repro-lib reproduce` through click with the batch replaced by a recorder."""
    seen = {}

    def fake_batch(client, options, store_path=None):
        options.validate()
        seen["options"] = options
        return batch.BatchSummary.of("r-test", _Backend(options), options.reset_freq, [])

    monkeypatch.setattr(batch, "reproduce", fake_batch)
    monkeypatch.setattr(cli.running, "client_for", lambda host: None)
    monkeypatch.setenv("REPRO_LIB_HOME", str(tmp_path))

    def invoke(*args, env=None):
        monkeypatch.setattr(sys, "argv", ["repro-lib", "reproduce", *args])
        result = CliRunner().invoke(cli.main, ["reproduce", *args], env=env or {})
        assert result.exit_code == 0, (result.output, result.exception)
        return seen["options"], result.output

    return invoke


class _Backend:
    def __init__(self, options):
        self.name, self.image, self.cache_image = options.backend, options.image, options.image
        self.cache_type, self.mode = options.cache, options.mode


EACH_VARIABLE = [
    # (variable, value, extra args, BatchOptions attribute, expected, as shown)
    ("BUILDKIT_IMAGE", "moby/buildkit:v0.9.1-rootless", (), "image",
     "moby/buildkit:v0.9.1-rootless", "--image moby/buildkit:v0.9.1-rootless"),
    ("RETRIES", "3", (), "tries", 3, "--tries 3"),
    ("CACHE_RESET_FREQ", "2", (), "reset_freq", 2, "--reset-freq 2"),
    # test.sh tests these with [ -n "$VAR" ]: any value, even 0, is on
    ("NO_CLEANUP", "0", (), "no_cleanup", True, "--no-cleanup"),
    ("USE_LOCAL_CACHE", "yes", (), "cache", "local", "--cache local"),
    ("SKIP_CREATE_CACHE", "1", ("--cache-ref", "127.0.0.1:5000/c:1"), "skip_create_cache",
     True, "--skip-create-cache"),
    ("SKIP_TESTS", "true", (), "skip_tests", True, "--skip-tests"),
]  # fmt: skip


@pytest.mark.parametrize("case", EACH_VARIABLE, ids=[c[0] for c in EACH_VARIABLE])
def test_each_variable_sets_its_option_and_is_said(recorded, case):
    name, value, args, attribute, expected, shown = case
    options, output = recorded(*args)
    assert getattr(options, attribute) != expected  # the default differs
    options, output = recorded(*args, env={name: value})
    assert getattr(options, attribute) == expected
    assert output.splitlines()[0] == f"from test.sh's environment: {name}={value} → {shown}"
    # the recorded command reruns the same batch
    assert options.command.startswith(f"{name}={value} repro-lib reproduce")


def test_an_empty_variable_is_unset_as_in_test_sh(recorded):
    options, output = recorded(env={name: "" for name in testsh_env.NAMES})
    assert (options.tries, options.reset_freq, options.cache) == (20, 4, "registry")
    assert not (options.no_cleanup or options.skip_tests or options.skip_create_cache)
    assert not output.startswith("from test.sh")


def test_the_done_when_settings_reach_the_batch(recorded):
    env = {"RETRIES": "6", "CACHE_RESET_FREQ": "2", "USE_LOCAL_CACHE": "1"}
    options, output = recorded("--offline", env=env)
    assert (options.tries, options.reset_freq, options.cache) == (6, 2, "local")
    assert output.splitlines()[0] == (
        "from test.sh's environment: RETRIES=6 → --tries 6, CACHE_RESET_FREQ=2 → --reset-freq 2, "
        "USE_LOCAL_CACHE=1 → --cache local"
    )


OPTION_WINS = [
    ("RETRIES", "5", ("--tries", "3"), "tries", 3),
    ("CACHE_RESET_FREQ", "8", ("--reset-freq", "2"), "reset_freq", 2),
    ("BUILDKIT_IMAGE", "moby/buildkit:v0.8.3", ("--image", "moby/buildkit:v0.9.1"), "image",
     "moby/buildkit:v0.9.1"),
    ("USE_LOCAL_CACHE", "1", ("--cache", "registry"), "cache", "registry"),
    # an option equal to the default still wins: it was given
    ("RETRIES", "5", ("--tries", "20"), "tries", 20),
]  # fmt: skip


@pytest.mark.parametrize("case", OPTION_WINS, ids=[f"{c[0]}{c[2]}" for c in OPTION_WINS])
def test_an_option_beats_its_variable(recorded, case):
    name, value, args, attribute, expected = case
    options, output = recorded(*args, env={name: value, "SKIP_TESTS": "1"})
    assert getattr(options, attribute) == expected
    assert options.skip_tests  # the other variable still applies
    first = output.splitlines()[0]
    assert f"{name} overridden by {args[0]}" in first and f"{name}={value}" not in first
    assert f"{name}=" not in options.command.split("repro-lib")[0]


BAD_VALUES = [
    ("RETRIES", "abc", (), r"RETRIES='abc' is not a whole number"),
    ("RETRIES", "0", (), r"RETRIES='0' must be at least 1"),
    ("RETRIES", "-2", (), r"RETRIES='-2' is not a whole number"),
    ("CACHE_RESET_FREQ", "0", (), r"CACHE_RESET_FREQ='0' must be at least 1"),
    ("CACHE_RESET_FREQ", "2.5", (), r"CACHE_RESET_FREQ='2.5' is not a whole number"),
    ("BUILDKIT_IMAGE", "moby/buildkit v0.9.0", (), r"BUILDKIT_IMAGE=.* is not an image reference"),
    # values that are fine alone but not with the rest of the command
    ("USE_LOCAL_CACHE", "1", ("--backend", "engine"), r"inline, not local .*USE_LOCAL_CACHE=1"),
    ("SKIP_CREATE_CACHE", "1", (), r"--cache-ref .*SKIP_CREATE_CACHE=1"),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[f"{c[0]}={c[1]}" for c in BAD_VALUES])
def test_a_bad_value_is_exit_2_and_one_line_naming_the_variable(tmp_path, case):
    name, value, args, pattern = case
    proc = run_cli(
        "reproduce", *args, home=tmp_path, timeout=120,
        env={name: value, "DOCKER_HOST": f"unix://{tmp_path}/absent.sock"},
    )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr


def test_sweep_reads_none_of_them_and_says_so(tmp_path):
    args = ("sweep", "--backend", "engine", "--reset-freq", "1,2", "--tries", "1")
    env = {"RETRIES": "7", "USE_LOCAL_CACHE": "1", "DOCKER_HOST": f"unix://{tmp_path}/absent.sock"}
    proc = run_cli(*args, "--shard", "3/3", home=tmp_path, env=env)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "repro-lib: warning: sweep ignores RETRIES, USE_LOCAL_CACHE (test.sh's variables are "
        "read by `reproduce` only; a sweep takes --versions, --tries, --reset-freq, --cache)"
    ]
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(*args, "--shard", "3/3", home=tmp_path)
    assert "warning" not in proc.stderr


def _trials(home, run_id):
    with Store(home / "data/raw/trials.sqlite", read_only=True) as store:
        return store.run(run_id), store.trials(run_id)


def _summary(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_retries_and_reset_freq_change_the_recorded_engine_batch(
    docker_client, fixture_images, docker_cli, lab_home
):
    env = {"RETRIES": "3", "CACHE_RESET_FREQ": "2"}
    proc = run_cli("reproduce", *ENGINE_ARGS, "--json", home=lab_home, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = _summary(proc)
    said = "from test.sh's environment: RETRIES=3 → --tries 3, CACHE_RESET_FREQ=2 → --reset-freq 2"
    assert summary["from_environment"] == said
    assert f"{said}\nrun {summary['run_id']} " in proc.stderr  # the summary's first line
    run, trials = _trials(lab_home, summary["run_id"])
    assert [(t.trial, t.reset_freq, t.since_reset) for t in trials] == [
        (1, 2, 1),
        (2, 2, 2),
        (3, 2, 1),
    ]
    assert run["params"]["command"].startswith("RETRIES=3 CACHE_RESET_FREQ=2 repro-lib reproduce")


def test_no_cleanup_skip_tests_then_skip_create_cache_on_the_engine(
    docker_client, fixture_images, docker_cli, lab_home
):
    """NO_CLEANUP keeps the exported cache, SKIP_TESTS runs no try, SKIP_CREATE_CACHE reuses it."""
    proc = run_cli(
        "reproduce", *ENGINE_ARGS, "--json", home=lab_home,
        env={"NO_CLEANUP": "1", "SKIP_TESTS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = _summary(proc)
    try:
        assert first["tries"] == 0 and _trials(lab_home, first["run_id"])[1] == []
        assert lab.leftovers(docker_client, first["run_id"])["containers"]  # kept
        ref = first["kept"]["cache_ref"]
        proc = run_cli(
            "reproduce", *ENGINE_ARGS, "--cache-ref", ref, "--json", home=lab_home,
            env={"SKIP_CREATE_CACHE": "1", "RETRIES": "2"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        second = _summary(proc)
        run, trials = _trials(lab_home, second["run_id"])
        assert run["params"]["skip_create_cache"] is True
        assert [t.cache_hits for t in trials] == [3, 3]  # the kept cache served every step
        assert not lab.leftovers(docker_client, second["run_id"])["containers"]
    finally:
        assert run_cli("clean", "--run", first["run_id"], home=lab_home).returncode == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_buildkit_image_and_local_cache_change_the_recorded_container_batch(
    docker_client, fixture_images, affected_buildkit, lab_home
):
    from .conftest import CONTAINER_ARGS

    env = {"BUILDKIT_IMAGE": affected_buildkit, "USE_LOCAL_CACHE": "1", "RETRIES": "2"}
    proc = run_cli("reproduce", *CONTAINER_ARGS, "--json", home=lab_home, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    _, trials = _trials(lab_home, _summary(proc)["run_id"])
    assert [(t.image, t.cache_type) for t in trials] == [(affected_buildkit, "local")] * 2


def test_scripts_lab_looks_for_the_image_buildkit_image_names(tmp_path):
    """With no options, scripts/lab checks BUILDKIT_IMAGE's image, and never swaps in the
    engine backend for an image the user named."""
    from .test_lab_script import DOCKER_CE, _closed_port, run_lab

    image = "moby/buildkit:v0.9.1-rootless"
    hub = f"http://127.0.0.1:{_closed_port()}"
    proc, calls = run_lab(
        tmp_path, "reproduce", installed=DOCKER_CE + " python3-venv python3-pip", engine_up=True,
        extra_env={"REPRO_LIB_HUB_URL": hub, "BUILDKIT_IMAGE": image},
    )  # fmt: skip
    assert f"docker image inspect {image}" in calls
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lab: error: BUILDKIT_IMAGE={image} is not here and {hub} is unreachable: "
        "`docker load` it, or unset BUILDKIT_IMAGE to run the engine backend instead"
    ]
    assert not [c for c in calls if c.startswith("repro-lib")]
