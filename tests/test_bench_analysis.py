"""The analysis benchmark's synthetic stores: real rows copied, new ids, shifted times.

Timing itself belongs in ``scripts/bench-analysis``, not in a unit test.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

from repro_lib.bench_analysis import build_store, largest_sweep, main
from repro_lib.results import load_results

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data/raw/sample/trials.sqlite"


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_copies_have_new_ids_and_later_times(tmp_path):
    out = tmp_path / "three.sqlite"
    n = build_store(SAMPLE, out, range(3))
    source = load_results(SAMPLE)
    copied = load_results(out)
    assert n == len(copied) == 3 * len(source)
    assert copied["run_id"].nunique() == 3 * source["run_id"].nunique()
    first = copied[copied["run_id"].isin(source["run_id"])]
    assert first.drop(columns="started_at").equals(source.drop(columns="started_at"))
    third = copied[copied["run_id"].str.endswith("-x00002")].reset_index(drop=True)
    assert third["started_at"].min() > source["started_at"].max()  # no overlap in time
    shift = third["started_at"] - source["started_at"]
    assert shift.nunique() == 1 and shift[0] > pd.Timedelta(0)  # one shift for the whole copy
    assert (third["outcome"] == source["outcome"]).all()
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 3 * len(
            set(source["run_id"])
        )
    sweeps = source["sweep_id"].value_counts()
    assert largest_sweep(out) == (sweeps.index[0] if len(sweeps) else "")
    findings = tmp_path / "findings.sqlite"
    build_store(ROOT / "data/raw/findings/trials.sqlite", findings, [0, 1])
    assert largest_sweep(findings) == "findings-k-curve"  # 1,200 of 2,840 trials per copy


def test_schema_is_the_projects(tmp_path):
    out = tmp_path / "one.sqlite"
    build_store(SAMPLE, out, [0])
    fresh = tmp_path / "fresh.sqlite"
    from repro_lib.store import Store

    Store(fresh).close()
    assert _schema(out) == _schema(fresh)


def test_bad_arguments_exit_2(capsys):
    assert main(["--sizes", "2k"]) == 2
    assert main(["--steps", "dance"]) == 2
    assert "unknown size or step" in capsys.readouterr().err
