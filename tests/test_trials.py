"""The reset schedule and the trial loop's bookkeeping (pure)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from repro_lib.builders import FEATURES, backend_class, supports
from repro_lib.errors import BuildFailed, InfraError, UsageError
from repro_lib.lab import HostFacts
from repro_lib.records import Outcome
from repro_lib.store import Store
from repro_lib.trials import (
    TrialContext,
    reset_schedule,
    resets_before,
    run_trials,
    validate_counts,
)


@pytest.mark.parametrize(
    "tries,k,expected",
    [
        (8, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
        (8, 2, [1, 3, 5, 7]),
        (10, 4, [1, 5, 9]),
        (12, 5, [1, 6, 11]),
        (3, 8, [1]),
        (20, 20, [1]),
    ],
)
def test_reset_schedule_for_several_k(tries, k, expected):
    assert reset_schedule(tries, k) == expected
    # the first try always starts fresh, then every k tries
    assert [t for t in range(1, tries + 1) if resets_before(t, k)] == expected


@pytest.mark.parametrize("tries,k", [(0, 4), (5, 0), (-1, 4), (5, -2)])
def test_bad_counts(tries, k):
    with pytest.raises(UsageError, match="at least 1"):
        validate_counts(tries, k)


def test_backend_features_are_checked_by_name():
    container, engine = backend_class("container"), backend_class("engine")
    assert supports(container, "daemon-mode") and supports(container, "mirror")
    assert not supports(engine, "daemon-mode") and supports(engine, "inline-cache")
    assert all(f in FEATURES for f in container.features | engine.features)
    with pytest.raises(ValueError, match="unknown feature"):
        supports(container, "daemon_mode")  # a typo fails loudly instead of reading as "no"


class _StandInBackend:
    """Only what the trial loop asks of a backend: resets that fail on demand, and
    builds that fail (a build error needs no tarball, so no engine is needed)."""

    name = image = version = cache_image = cache_version = "stand-in"
    cache_type, mode, buildkit_version, privileged = "inline", "engine", "", False

    def __init__(self, failing_resets: set[int]) -> None:
        self.failing_resets = failing_resets
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1
        if self.resets in self.failing_resets:
            raise InfraError("the engine did not answer")

    def build(self, trial: int):
        raise BuildFailed(f"trial {trial} failed")


def _loop(tmp_path, trials, reset_freq, failing_resets=frozenset()):
    env = SimpleNamespace(
        work_dir=tmp_path,
        logs_dir=tmp_path / "logs",
        scenario=SimpleNamespace(expected=("repro.txt",)),
        wait_healthy=lambda: None,
    )
    ctx = TrialContext(
        run_id="r", reset_freq=reset_freq, scenario="reference", facts=HostFacts("1", "k")
    )
    with Store(tmp_path / "s.sqlite") as store:
        run_trials(_StandInBackend(set(failing_resets)), env, store, ctx, trials)
        return store.trials("r")


def test_a_failed_reset_starts_a_cycle_of_its_own(tmp_path):
    records = _loop(tmp_path, range(1, 11), 4, failing_resets={2})  # the reset before trial 5
    assert [(r.trial, r.since_reset, r.cycle) for r in records] == [
        (1, 1, 1),
        (2, 2, 1),
        (3, 3, 1),
        (4, 4, 1),
        (5, 1, 5),  # the failed reset: an infra error, first and only try of its cycle
        (6, 1, 6),  # the next try resets again
        (7, 2, 6),
        (8, 3, 6),
        (9, 1, 9),  # the schedule's reset
        (10, 2, 9),
    ]
    assert records[4].outcome is Outcome.INFRA_ERROR and records[4].detail.startswith("reset")
    assert [r.reset_index for r in records] == [0, 0, 0, 0, 1, 2, 2, 2, 3, 3]


def test_the_cycle_key_is_the_trial_number_of_the_cycles_first_try(tmp_path):
    # a resumed batch runs the trials it lacks: numbers with gaps, counted by tries
    records = _loop(tmp_path, [3, 4, 6, 7, 9], 4)
    assert [(r.trial, r.since_reset, r.cycle) for r in records] == [
        (3, 1, 3),
        (4, 2, 3),
        (6, 3, 3),
        (7, 4, 3),
        (9, 1, 9),
    ]
