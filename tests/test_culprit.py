"""Culprit finding on simulated probes: calibrated, both directions, cheaper than bisection.

Pure and fast: no Docker, no store. Seed counts are modest, so each frequency is
compared with its target minus a Monte-Carlo margin of 2.5 binomial standard
errors, and the numbers go in the assertion message.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from repro_lib.culprit import (
    CulpritSearch,
    Priors,
    expected_information,
    simulate_search,
    transition_posterior,
)

CANDIDATES = 20
SEEDS = 200
CONFIDENCE = 0.95
BUDGET = 3000


def _margin(p: float, n: int) -> float:
    return 2.5 * math.sqrt(p * (1 - p) / max(n, 1))


def _run_searches(before, after, tries_per_cycle, direction="broke", icc=0.0, seeds=SEEDS):
    """(planted, found, confident, tries) per seed, transitions uniform over the range."""
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        planted = int(rng.integers(0, CANDIDATES))
        result = simulate_search(
            planted,
            CANDIDATES,
            before,
            after,
            tries_per_cycle,
            rng,
            direction=direction,
            confidence=CONFIDENCE,
            max_tries=BUDGET,
            icc=icc,
        )
        rows.append((planted, result.found, result.confident, result.tries))
    return np.array(rows)


def _deflaked_bisection(before, after, tries_per_cycle, seeds=SEEDS, max_rate=0.01):
    """Today's bisection on the same problems: (planted, found, tries) per seed.

    The good anchor sits before candidate 0 and the last candidate is bad. A probe
    runs cycles until one fails (bad) or until ``C`` clean cycles give a clean
    verdict, ``1 - 0.05^(1/C) <= max_rate`` (299 cycles at 1%).
    """
    clean_cycles = math.ceil(math.log(0.05) / math.log(1 - max_rate))
    assert 1 - 0.05 ** (1 / clean_cycles) <= max_rate
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        planted = int(rng.integers(0, CANDIDATES))
        good, bad, tries = -1, CANDIDATES - 1, 0
        while bad - good > 1:
            mid = (good + bad) // 2
            per_try = before if mid < planted else after
            per_cycle = 1 - (1 - per_try) ** tries_per_cycle
            first_failure = rng.geometric(per_cycle) if per_cycle > 0 else clean_cycles + 1
            if first_failure <= clean_cycles:
                tries += first_failure * tries_per_cycle
                bad = mid
            else:
                tries += clean_cycles * tries_per_cycle
                good = mid
        rows.append((planted, bad, tries))
    return np.array(rows)


@pytest.mark.parametrize(
    "before, after, tries_per_cycle, direction, icc",
    [
        # broke, a background rate on the good side, K = 3
        (0.005, 0.1, 3, "broke", 0.0),
        # fixed: the flaky side comes first
        (0.1, 0.005, 3, "fixed", 0.0),
        # a higher background, one try per cycle
        (0.02, 0.2, 1, "broke", 0.0),
        # tries of a cycle alike (intra-cycle correlation 0.3): cycles stay the unit
        (0.005, 0.1, 3, "broke", 0.3),
    ],
)
def test_the_planted_transition_is_found_at_the_stated_confidence(
    before, after, tries_per_cycle, direction, icc
):
    rows = _run_searches(before, after, tries_per_cycle, direction, icc)
    confident = rows[:, 2] == 1
    n_confident = int(confident.sum())
    right = float(np.mean(rows[confident, 0] == rows[confident, 1]))
    floor = CONFIDENCE - _margin(CONFIDENCE, n_confident)
    assert right >= floor, (
        f"{direction} {before}->{after} K={tries_per_cycle} icc={icc}: the search named the "
        f"planted candidate in {right:.3f} of {n_confident} confident runs, "
        f"below {CONFIDENCE} - margin = {floor:.3f}"
    )
    # and it reaches the confidence within the budget almost always
    assert confident.mean() >= 0.9, (
        f"only {confident.mean():.3f} of {SEEDS} searches reached {CONFIDENCE} "
        f"within {BUDGET} tries"
    )


def test_fewer_tries_than_deflaked_bisection_on_the_same_problems():
    # no background rate: the deflaked bisection's own ground, where it is right
    before, after, k = 0.0, 0.1, 3
    ours = _run_searches(before, after, k)
    theirs = _deflaked_bisection(before, after, k)
    ours_tries, theirs_tries = ours[:, 3].mean(), theirs[:, 2].mean()
    ours_right = np.mean(ours[:, 0] == ours[:, 1])
    theirs_right = np.mean(theirs[:, 0] == theirs[:, 1])
    numbers = (
        f"culprit search {ours_tries:.0f} tries/search, right {ours_right:.3f}; "
        f"deflaked bisection {theirs_tries:.0f} tries/search, right {theirs_right:.3f} "
        f"({SEEDS} seeds, {CANDIDATES} candidates, {before}->{after}, K={k})"
    )
    assert ours_tries < 0.5 * theirs_tries, numbers
    assert ours_right >= CONFIDENCE - _margin(CONFIDENCE, SEEDS), numbers
    assert theirs_right >= 0.99, numbers


def test_a_background_rate_misleads_deflaked_bisection_but_not_the_search():
    # 0.5% per try, K = 3: 1.5% of good cycles fail, so 299 clean cycles rarely happen
    before, after, k = 0.005, 0.1, 3
    ours = _run_searches(before, after, k)
    theirs = _deflaked_bisection(before, after, k)
    ours_right = np.mean(ours[:, 0] == ours[:, 1])
    theirs_right = np.mean(theirs[:, 0] == theirs[:, 1])
    numbers = (
        f"culprit search right {ours_right:.3f} in {ours[:, 3].mean():.0f} tries/search; "
        f"deflaked bisection right {theirs_right:.3f} in {theirs[:, 2].mean():.0f}"
    )
    assert ours_right >= 0.9, numbers
    assert theirs_right <= 0.2, numbers


# the model on fixed data ---------------------------------------------------------


def test_the_posterior_points_at_the_first_bad_candidate():
    cycles = np.full(6, 40)
    failing = np.array([1, 0, 1, 12, 10, 11])  # background below index 3, flaky from it
    posterior = transition_posterior(cycles, failing, "broke")
    assert posterior.argmax() == 3 and posterior[3] > 0.95, posterior


def test_the_direction_says_which_side_a_failure_points_to():
    # one failing cycle at candidate 2 and nothing else: weak data, the priors decide
    cycles, failing = np.array([0, 0, 1, 0, 0]), np.array([0, 0, 1, 0, 0])
    broke = transition_posterior(cycles, failing, "broke")
    fixed = transition_posterior(cycles, failing, "fixed")
    # broke: the failure is on the bad side, after the transition (t <= 2)
    assert broke[:3].sum() > 0.7, broke
    # fixed: the failure is before the fix (t > 2)
    assert fixed[3:].sum() > 0.7, fixed


def test_the_posterior_is_flat_without_data_and_sums_to_one():
    posterior = transition_posterior(np.zeros(7), np.zeros(7))
    assert np.allclose(posterior, 1 / 7)
    posterior = transition_posterior([5, 5, 5], [0, 2, 4])
    assert posterior.sum() == pytest.approx(1.0)


def test_the_first_probe_is_near_the_middle():
    gain = expected_information(np.zeros(21), np.zeros(21))
    assert abs(int(gain.argmax()) - 10) <= 2, gain


def test_a_search_refuses_inconsistent_input():
    with pytest.raises(ValueError, match="direction"):
        CulpritSearch(5, 3, direction="sideways")
    search = CulpritSearch(5, 3)
    with pytest.raises(ValueError, match="0..3"):
        search.record(0, [4])
    with pytest.raises(ValueError, match="outside"):
        search.record(5, [0])
    with pytest.raises(ValueError, match="failing"):
        transition_posterior([1, 1], [2, 0])


def test_best_lists_candidates_most_probable_first():
    search = CulpritSearch(4, 1, priors=Priors(), max_tries=10)
    search.record(2, [1, 1, 1, 1])
    search.record(1, [0] * 6)
    best = search.best(2)
    assert [c.index for c in best][0] == 2
    assert best[0].posterior >= best[1].posterior
    assert search.tries == 10 and search.done()
