"""A shard the partition leaves empty runs nothing: no engine, no registries, no store."""

from __future__ import annotations

import json

from .conftest import run_cli

PLAN = ("sweep", "--backend", "engine", "--offline", "--reset-freq", "1,2", "--tries", "1")


def test_an_empty_shard_says_so_and_needs_no_engine(tmp_path):
    absent = {"DOCKER_HOST": f"unix://{tmp_path}/absent.sock"}
    proc = run_cli(*PLAN, "--shard", "3/3", home=tmp_path, env=absent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "nothing to run in shard 3/3: the plan has 2 cells"
    assert not (tmp_path / "data/raw/trials.sqlite").exists()
    # with --json the note goes to stderr and the last line of stdout stays JSON
    proc = run_cli(
        *PLAN, "--shard", "3/3", "--sweep-id", "s-e", "--json", home=tmp_path, env=absent
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["sweep_id"] == "s-e"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["cells"] == []
    assert "nothing to run in shard 3/3" in proc.stderr
    # a shard with a cell does need the engine: the check above is what spared it
    proc = run_cli(*PLAN, "--shard", "2/3", home=tmp_path, env=absent)
    assert proc.returncode == 2 and "not reachable" in proc.stderr, proc.stderr
