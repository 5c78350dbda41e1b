"""Shards: parsing K/N, a deterministic balanced partition, and a stable plan digest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from repro_lib.errors import UsageError
from repro_lib.plan import (
    check_sweep_id,
    parse_shard,
    partition,
    plan_digest,
    shard_cells,
    shard_to_resume,
    validate_plan,
)

BAD_SHARDS = ["0/3", "4/3", "1/0", "3", "a/b", "1/3/2", "-1/3", "", "1.5/3"]


@pytest.mark.parametrize("text", BAD_SHARDS)
def test_bad_shard_values_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as info:
        parse_shard(text)
    assert "\n" not in info.value.one_line() and "--shard" in info.value.one_line()


def test_shard_values_parse():
    assert parse_shard("1/1") == (1, 1)
    assert parse_shard(" 2 / 3 ") == (2, 3)
    assert parse_shard("3/3") == (3, 3)


def _plan(**extra):
    raw = {
        "versions": "v0.8.3,v0.9.0,v0.9.1",
        "reset_freq": [1, 2, 4, 8],
        "cache": "registry,local",
        "tries": 10,
        **extra,
    }
    return validate_plan(raw)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 24, 30])
def test_partition_covers_every_cell_once_and_is_balanced(n):
    plan = _plan()
    parts = partition(plan, n)
    assert len(parts) == n
    indices = [c.index for part in parts for c in part]
    assert sorted(indices) == list(range(len(plan.cells())))
    loads = [sum(plan.tries for _ in part) for part in parts]
    assert max(loads) - min(loads) <= plan.tries  # no part is more than one cell heavier
    for k in range(1, n + 1):
        assert [c.index for c in shard_cells(plan, (k, n))] == [c.index for c in parts[k - 1]]


def test_more_shards_than_cells_leaves_empty_shards():
    plan = validate_plan({"backend": "engine", "reset_freq": [1, 2], "tries": 3})
    parts = partition(plan, 3)
    assert [len(p) for p in parts] == [1, 1, 0]


def test_partition_and_digest_do_not_depend_on_dict_order_or_process():
    plan = _plan(offline=True, base_image="b:1", registry_image="r:2")
    reordered = validate_plan(
        dict(reversed(list({**plan.as_dict(), **plan.batch, "batch": None}.items())))
    )
    assert plan_digest(plan) == plan_digest(reordered)
    code = (
        "import json; from repro_lib.plan import validate_plan; "
        "from repro_lib.plan import partition, plan_digest; "
        f"p = validate_plan(json.loads({json.dumps(json.dumps({**plan.as_dict(), **plan.batch, 'batch': None}))})); "
        "print(json.dumps([plan_digest(p), [[c.index for c in part] for part in partition(p, 3)]]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin", **_pythonpath()},
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(outputs) == 1
    digest, parts = json.loads(outputs.pop())
    assert digest == plan_digest(plan)
    assert parts == [[c.index for c in part] for part in partition(plan, 3)]


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def test_digest_ignores_lanes_and_machine_options_but_not_the_experiment():
    plan = _plan()
    assert plan_digest(plan) == plan_digest(_plan(lanes=7, docker_cli="/usr/bin/docker"))
    stored = {**plan.as_dict(), "command": "repro-lib sweep …", "shard": "1/3"}
    assert plan_digest(stored) == plan_digest(plan)  # the dict a sweep stores hashes alike
    for other in (
        _plan(tries=11),
        _plan(reset_freq=[1, 2, 4]),
        _plan(base_image="other:1"),
        _plan(until_confident=True),
        validate_plan({**_plan().as_dict(), "versions": "v0.9.0,v0.8.3,v0.9.1", "batch": None}),
    ):
        assert plan_digest(other) != plan_digest(plan)


def test_resume_takes_the_one_recorded_shard_and_refuses_ambiguity():
    assert shard_to_resume("s", [None, None], None) is None
    assert shard_to_resume("s", ["2/3", "2/3", None], None) == (2, 3)
    assert shard_to_resume("s", ["2/3"], (1, 3)) == (1, 3)
    with pytest.raises(UsageError, match="holds shards 1/3, 2/3"):
        shard_to_resume("s", ["1/3", "2/3"], None)
    with pytest.raises(UsageError, match="split into 3 shards, not 4"):
        shard_to_resume("s", ["1/3"], (1, 4))


@pytest.mark.parametrize("bad", ["", "a b", "../x", "-x", "x/y", "é"])
def test_sweep_ids_must_be_plain_names(bad):
    with pytest.raises(UsageError, match="--sweep-id"):
        check_sweep_id(bad)
    assert check_sweep_id("ci-1234-1.a_b") == "ci-1234-1.a_b"
