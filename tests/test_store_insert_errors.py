"""``append`` and ``record_batch`` write through one insert path with one error handling.

A store that cannot be written is an infra error naming what was lost and
saying how to go on; a duplicate key is the caller's to judge (``append_once``
counts it as already recorded, a resumed batch keeps its first cache facts).
"""

from __future__ import annotations

import sqlite3

import pytest

from repro_lib.errors import InfraError
from repro_lib.forensics import CacheFacts
from repro_lib.store import Store

from .factories import make_record


def _facts(run_id: str = "r", location: str = "localhost:5000/cache") -> CacheFacts:
    return CacheFacts(run_id, cache_type="registry", exporter="v0.9.0", location=location)


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "trials.sqlite"
    with Store(path) as store:
        store.start_run("r", {})
    return path


def test_an_unwritable_store_is_one_infra_error_for_trials_and_cache_facts(store_path):
    with Store(store_path, read_only=True) as store:  # any write fails, as on a full disk
        with pytest.raises(InfraError) as trial:
            store.append(make_record(3))
        with pytest.raises(InfraError) as batch:
            store.record_batch(_facts())
    assert trial.value.one_line().startswith(f"cannot record trial 3 of r in {store_path}: ")
    assert batch.value.one_line().startswith(
        f"cannot record the cache facts of r in {store_path}: "
    )
    for error in (trial.value, batch.value):
        assert "readonly" in str(error)
        assert error.hint == trial.value.hint and "resume to finish" in error.hint


def test_a_duplicate_is_left_to_the_caller(store_path):
    with Store(store_path) as store:
        store.append(make_record(1))
        with pytest.raises(sqlite3.IntegrityError):
            store.append(make_record(1))
        assert store.append_once(make_record(1)) is False
        store.record_batch(_facts(location="first"))
        store.record_batch(_facts(location="second"))  # a resumed run: the first stands
        assert store.batch("r").location == "first"
        assert store.trial_numbers("r") == {1}
