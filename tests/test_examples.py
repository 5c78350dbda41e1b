"""examples/github-actions.yml, checked as data.

It must parse, split the sweep into as many shards as its matrix has jobs, carry
each shard's store to the merge job, and call only ``repro-lib`` commands and
options that exist (checked against ``repro-lib <cmd> --help``). The commands
themselves are run by ``test_shard_sweep.py``.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

from . import workflow
from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
VALUES = {"matrix.shard": "2", "SWEEP_ID": "gh-1-1"}


@cache
def _help(command: tuple[str, ...]) -> str:
    proc = run_cli(*command, "--help", home=ROOT)
    assert proc.returncode == 0, f"repro-lib {' '.join(command)} --help: {proc.stderr}"
    return proc.stdout


def unknown_parts(call: list[str]) -> list[str]:
    """The sub-commands and options of one ``repro-lib`` call that its --help lacks."""
    words = [w for w in call if not w.startswith("-")]
    command: tuple[str, ...] = ()
    for word in words:
        listing = _help(command)
        if "Commands:" not in listing:
            break
        if not re.search(rf"^\s+{re.escape(word)}\s", listing, re.M):
            return [" ".join((*command, word))]
        command = (*command, word)
    text = _help(command)
    options = [w.split("=")[0] for w in call if w.startswith("--")]
    return [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]


def _all_calls() -> list[list[str]]:
    jobs = workflow.load()["jobs"]
    return [c for name in jobs for c in workflow.job_calls(name, VALUES)]


def test_the_workflow_parses_and_shards_over_its_matrix():
    data = workflow.load()
    assert "workflow_dispatch" in (data.get("on") or data.get(True))
    shards = data["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    n = len(shards)
    assert shards == list(range(1, n + 1))
    sweeps = [c for c in workflow.job_calls("shard", VALUES) if c[0] == "sweep"]
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert sweep[sweep.index("--shard") + 1] == f"{VALUES['matrix.shard']}/{n}"
    assert sweep[sweep.index("--sweep-id") + 1] == VALUES["SWEEP_ID"]
    assert data["jobs"]["merge"]["needs"] == "shard"


def test_each_shard_store_reaches_the_merge_and_the_report_covers_the_sweep():
    data = workflow.load()
    shard_steps = data["jobs"]["shard"]["steps"]
    (sweep,) = [c for c in workflow.job_calls("shard", VALUES) if c[0] == "sweep"]
    store = sweep[sweep.index("--store") + 1]
    (upload,) = [s for s in shard_steps if "upload-artifact" in s.get("uses", "")]
    assert fnmatch(store, workflow.fill(upload["with"]["path"], VALUES))
    assert upload.get("if") == "always()"
    (download,) = [
        s for s in data["jobs"]["merge"]["steps"] if "download-artifact" in s.get("uses", "")
    ]
    artifact = workflow.fill(upload["with"]["name"], VALUES)
    assert fnmatch(artifact, download["with"]["pattern"])
    calls = {c[0]: c for c in workflow.job_calls("merge", VALUES)}
    merged, *inputs = calls["merge"][1:]
    landed = f"{download['with']['path']}/{Path(store).name}"
    assert any(fnmatch(landed, pattern) for pattern in inputs)
    report = calls["report"]
    assert report[report.index("--store") + 1] == merged
    assert report[report.index("--sweep") + 1] == VALUES["SWEEP_ID"]


def test_every_repro_lib_call_uses_commands_and_options_that_exist():
    calls = _all_calls()
    assert {c[0] for c in calls} >= {"sweep", "merge", "report", "engine"}
    assert {tuple(c): unknown_parts(c) for c in calls if unknown_parts(c)} == {}


def test_the_checker_catches_what_does_not_exist():
    assert unknown_parts(["sweep", "--shards", "1/3"]) == ["--shards"]
    assert unknown_parts(["report", "--sweep-id", "x"]) == ["--sweep-id"]
    assert unknown_parts(["merged", "out.sqlite"]) == ["merged"]
    assert unknown_parts(["engine", "restart"]) == ["engine restart"]


def test_other_steps_call_only_the_lab_script_and_its_package():
    scripts = [s for job in workflow.load()["jobs"].values() for s in workflow.run_scripts(job)]
    lab = (ROOT / "scripts" / "lab").read_text()
    subcommands = set(re.findall(r"^\s+(\w+)\)", lab, re.M))
    allowed = re.compile(
        r"^(\.venv/bin/repro-lib |\.venv/bin/python -m repro_lib\.fixtures$|scripts/lab (\w+)$"
        r"|mkdir -p |echo \"DOCKER_HOST=\$\(\.venv/bin/repro-lib engine start\)\" >> \"\$GITHUB_ENV\"$)"
    )
    for script in scripts:
        for line in workflow.logical_lines(script):
            match = allowed.match(line)
            assert match, f"unexpected command in the workflow: {line}"
            if match.group(2):
                assert match.group(2) in subcommands, f"scripts/lab has no {match.group(2)}"


def test_the_examples_readme_names_the_workflow_and_gitlab():
    text = (ROOT / "examples" / "README.md").read_text()
    assert "github-actions.yml" in text and "GitLab" in text and "--shard" in text
