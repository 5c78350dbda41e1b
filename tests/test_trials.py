"""The reset schedule and the trial loop's bookkeeping (pure)."""

from __future__ import annotations

import pytest

from repro_lib.builders import FEATURES, backend_class, supports
from repro_lib.errors import UsageError
from repro_lib.trials import reset_schedule, resets_before, validate_counts


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
