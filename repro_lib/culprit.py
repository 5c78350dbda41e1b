"""Culprit finding: which candidate in an ordered list broke (or fixed) a flaky build.

This is the statistical core: the model, the choice of the next probe, the
stopping rule, a simulated-probe driver, and the plain records of a search
(:class:`SearchRecord`) that the store keeps and the report draws. It imports
numpy and scipy and nothing from the rest of the package, so it runs builds
nowhere.

The model
---------
Candidates ``0 .. N-1`` are ordered (versions, or commits after a known-good ref
up to and including a known-bad one, as ``git bisect`` lists them). There is one
transition point ``t`` in ``0 .. N-1``: candidates ``< t`` behave like *before*
and candidates ``>= t`` like *after*, so ``t`` is the first "after" candidate,
the culprit. "No transition in range" (``t = N``) is left out on purpose: the
last candidate is the caller's bad (or, for a fix, fixed) anchor, so the range
holds the transition by construction, as in ``git bisect``; testing whether a
range holds any change at all is a two-sample comparison (``stats.compare``),
not a search. The prior on ``t`` is uniform.

**The unit is the reset cycle, scored as one Bernoulli "any failure" observation.**
A cycle of ``K`` tries is summarised by whether at least one try failed. That is
the package's clean verdict (``stats.CLEAN_BOUND_ASSUMES``): ``C`` clean cycles
bound the chance that a cycle shows the bug whatever the dependence between the
tries of a cycle, and cycles are assumed independent. Scoring cycles this way
needs no model of the within-cycle dependence (which a per-try Beta-Binomial with
a cycle-level overdispersion would have to estimate, from very few failing
cycles). The price: the rate means "per cycle of ``K`` tries", so every probe of
one search must use the same ``K`` (:class:`CulpritSearch` enforces it), and a
cycle with three failures counts as much as a cycle with one, which discards a
little information when tries within a cycle are independent.

Each side has an unknown per-cycle failure probability with a Beta prior. The
*good* side (before for ``direction="broke"``, after for ``"fixed"``) gets
``Beta(1, 19)`` by default: mean 0.05, so a background failure rate above 0 is
expected, not an anomaly. The *bad* side gets the uniform ``Beta(1, 1)``. The
priors are asymmetric so that the posterior knows which side is which when data
are few; the model does not force the bad rate above the good one, so with much
data it locates the change whichever direction was given (a wrong direction costs
tries, not correctness). Integrating each side's rate out
gives the Beta-Binomial marginal likelihood of that side's cycles (for a given
ordered sequence of cycles the binomial coefficient is absent and the same for
every ``t``)::

    p(data | t) = B(a_b + f_b, b_b + c_b - f_b) / B(a_b, b_b)
                * B(a_a + f_a, b_a + c_a - f_a) / B(a_a, b_a)

with ``c``/``f`` the cycles/failing cycles before (``b``) and after (``a``) ``t``.
The posterior over ``t`` uses every cycle of every probe; it is computed for all
``t`` at once from cumulative sums.

The next probe
--------------
Maximum expected information gain, one cycle ahead: probe the candidate ``j``
whose next cycle's outcome ``y`` has the largest mutual information with ``t``,
``I(y; t) = H(sum_t pi_t q_tj) - sum_t pi_t H(q_tj)``, where ``q_tj`` is the
posterior-predictive chance that a cycle at ``j`` fails if the transition is at
``t`` and ``H`` the binary entropy. Unlike plain probabilistic bisection (probe the
posterior median), it accounts for how well a probe can tell the sides apart: a
cycle on the bad side says little when the bad rate is low, and the rule moves
towards the flaky side or repeats a probe accordingly. It also needs no noise rate
given in advance; the rates are learnt from the same data. The rule is myopic
(one cycle ahead) and a probe runs several cycles (``cycles_per_probe``) because
each probe costs a build and a reset; both are standard simplifications
(cf. Google's Flake-Aware Culprit Finding, ICST 2023).

Stopping
--------
Stop when one candidate's posterior reaches ``confidence`` (default 0.95) or the
try budget is spent; :meth:`CulpritSearch.best` lists the best candidates with
their posteriors either way. The posterior is calibrated when the model holds
(rates drawn from the priors, independent cycles); with rates far outside the
priors it may be over- or under-confident, which the tests measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import betaln

Direction = Literal["broke", "fixed"]

#: Default Beta prior of the per-cycle failure probability on the good side:
#: mean 0.05, a background rate above zero is expected.
GOOD_PRIOR = (1.0, 19.0)
#: Default Beta prior on the bad side: uniform.
BAD_PRIOR = (1.0, 1.0)


@dataclass(frozen=True)
class Priors:
    """Beta priors ``(alpha, beta)`` of the per-cycle failure probability per side."""

    good: tuple[float, float] = GOOD_PRIOR
    bad: tuple[float, float] = BAD_PRIOR

    def sides(self, direction: Direction) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(before, after)`` priors for a search that looks for ``direction``."""
        if direction == "broke":
            return self.good, self.bad
        if direction == "fixed":
            return self.bad, self.good
        raise ValueError(f"direction must be 'broke' or 'fixed', got {direction!r}")


def _side_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums over candidates ``< t`` and ``>= t`` for every ``t`` in ``0 .. N-1``."""
    before = np.concatenate(([0.0], np.cumsum(values)[:-1]))
    return before, values.sum() - before


def _check_counts(cycles: np.ndarray, failing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cycles = np.asarray(cycles, dtype=float)
    failing = np.asarray(failing, dtype=float)
    if cycles.ndim != 1 or cycles.shape != failing.shape or cycles.size == 0:
        raise ValueError("need one count of cycles and of failing cycles per candidate")
    if np.any(failing < 0) or np.any(failing > cycles):
        raise ValueError("need 0 <= failing cycles <= cycles for every candidate")
    return cycles, failing


def transition_posterior(
    cycles, failing_cycles, direction: Direction = "broke", priors: Priors = Priors()
) -> np.ndarray:
    """Posterior probability that each candidate is the first "after" candidate.

    Parameters
    ----------
    cycles, failing_cycles : array-like of shape (N,)
        Per candidate, complete reset cycles probed and how many had any failure.
    direction : "broke" or "fixed"
        Which side is the good one (gets ``priors.good``).
    priors : Priors

    Returns
    -------
    numpy.ndarray of shape (N,), summing to 1.
    """
    cycles, failing = _check_counts(cycles, failing_cycles)
    (a0, b0), (a1, b1) = priors.sides(direction)
    c_before, c_after = _side_counts(cycles)
    f_before, f_after = _side_counts(failing)
    log_ml = (
        betaln(a0 + f_before, b0 + c_before - f_before)
        - betaln(a0, b0)
        + betaln(a1 + f_after, b1 + c_after - f_after)
        - betaln(a1, b1)
    )
    weights = np.exp(log_ml - log_ml.max())
    return weights / weights.sum()


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def expected_information(
    cycles, failing_cycles, direction: Direction = "broke", priors: Priors = Priors()
) -> np.ndarray:
    """Expected information (bits) about ``t`` from one more cycle at each candidate."""
    cycles, failing = _check_counts(cycles, failing_cycles)
    posterior = transition_posterior(cycles, failing, direction, priors)
    (a0, b0), (a1, b1) = priors.sides(direction)
    c_before, c_after = _side_counts(cycles)
    f_before, f_after = _side_counts(failing)
    mean_before = (a0 + f_before) / (a0 + b0 + c_before)  # indexed by t
    mean_after = (a1 + f_after) / (a1 + b1 + c_after)
    n = cycles.size
    # rows t, columns j: candidate j is on the "before" side of t when j < t
    j_before = np.arange(n)[None, :] < np.arange(n)[:, None]
    fail_chance = np.where(j_before, mean_before[:, None], mean_after[:, None])
    predictive = posterior @ fail_chance
    return _binary_entropy(predictive) - posterior @ _binary_entropy(fail_chance)


@dataclass(frozen=True)
class Candidate:
    """One candidate's standing: its index, posterior and what was probed there."""

    index: int
    posterior: float
    cycles: int
    failing_cycles: int


@dataclass
class CulpritSearch:
    """A search over ``n_candidates``: record cycles, ask for the next probe, stop.

    Every probe must use the same ``tries_per_cycle`` (``K``): the model's rate is
    per cycle of ``K`` tries.
    """

    n_candidates: int
    tries_per_cycle: int
    direction: Direction = "broke"
    priors: Priors = field(default_factory=Priors)
    confidence: float = 0.95
    max_tries: int = 10_000
    cycles: np.ndarray = field(init=False)
    failing_cycles: np.ndarray = field(init=False)
    tries: int = field(init=False, default=0)
    probes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.n_candidates < 1:
            raise ValueError("need at least one candidate")
        if self.tries_per_cycle < 1:
            raise ValueError("need at least one try per cycle")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        self.priors.sides(self.direction)  # validates the direction
        self.cycles = np.zeros(self.n_candidates, dtype=np.int64)
        self.failing_cycles = np.zeros(self.n_candidates, dtype=np.int64)

    def record(self, index: int, failures_per_cycle) -> None:
        """Record one probe at ``index``: the failure count of each of its cycles."""
        failures = np.asarray(failures_per_cycle, dtype=np.int64).ravel()
        if not 0 <= index < self.n_candidates:
            raise ValueError(f"candidate index {index} outside 0..{self.n_candidates - 1}")
        if np.any(failures < 0) or np.any(failures > self.tries_per_cycle):
            raise ValueError(f"each cycle's failures must be in 0..{self.tries_per_cycle}")
        self.cycles[index] += failures.size
        self.failing_cycles[index] += int(np.count_nonzero(failures))
        self.tries += failures.size * self.tries_per_cycle
        self.probes += 1

    def posterior(self) -> np.ndarray:
        return transition_posterior(self.cycles, self.failing_cycles, self.direction, self.priors)

    def next_probe(self) -> int:
        """The candidate whose next cycle is expected to say most about ``t``."""
        gain = expected_information(self.cycles, self.failing_cycles, self.direction, self.priors)
        return int(np.argmax(gain))

    def confident(self) -> bool:
        return bool(self.posterior().max() >= self.confidence)

    def done(self) -> bool:
        """Stop: one candidate reached ``confidence`` or the try budget is spent."""
        return self.confident() or self.tries >= self.max_tries

    def best(self, count: int = 3) -> list[Candidate]:
        """The ``count`` most probable culprits, most probable first."""
        posterior = self.posterior()
        order = np.argsort(-posterior, kind="stable")[:count]
        return [
            Candidate(int(i), float(posterior[i]), int(self.cycles[i]), int(self.failing_cycles[i]))
            for i in order
        ]


@dataclass(frozen=True)
class SimulatedSearch:
    """What a simulated search found and what it cost."""

    found: int
    posterior: float
    tries: int
    probes: int
    confident: bool


def simulate_cycles(
    rng: np.random.Generator, rate: float, tries_per_cycle: int, cycles: int, icc: float = 0.0
) -> np.ndarray:
    """Failures per cycle at a per-try ``rate``; ``icc > 0`` makes a cycle's tries alike.

    With ``icc > 0`` each cycle draws its own per-try rate from a Beta of mean
    ``rate`` and intra-cycle correlation ``icc`` (a Beta-Binomial cycle), the
    dependence that makes the cycle the unit of replication.
    """
    if icc > 0 and 0 < rate < 1:
        scale = (1 - icc) / icc
        per_cycle = rng.beta(rate * scale, (1 - rate) * scale, size=cycles)
    else:
        per_cycle = np.full(cycles, rate)
    return rng.binomial(tries_per_cycle, per_cycle)


def simulate_search(
    transition: int,
    n_candidates: int,
    before_rate: float,
    after_rate: float,
    tries_per_cycle: int,
    rng: np.random.Generator,
    *,
    direction: Direction = "broke",
    priors: Priors = Priors(),
    confidence: float = 0.95,
    max_tries: int = 10_000,
    cycles_per_probe: int = 5,
    icc: float = 0.0,
) -> SimulatedSearch:
    """Run a search against simulated probes with a planted transition.

    Candidates ``< transition`` fail at the per-try ``before_rate``, the others at
    ``after_rate``; each probe runs ``cycles_per_probe`` cycles of
    ``tries_per_cycle`` tries at the candidate the search asks for.
    """
    if not 0 <= transition < n_candidates:
        raise ValueError(f"transition {transition} outside 0..{n_candidates - 1}")
    search = CulpritSearch(n_candidates, tries_per_cycle, direction, priors, confidence, max_tries)
    while not search.done():
        index = search.next_probe()
        rate = before_rate if index < transition else after_rate
        search.record(index, simulate_cycles(rng, rate, tries_per_cycle, cycles_per_probe, icc))
    top = search.best(1)[0]
    return SimulatedSearch(
        top.index, top.posterior, search.tries, search.probes, search.confident()
    )


#: How a candidate's image came to be: built by the hook in this search, found in
#: the image cache, the hook failed (skipped like ``git bisect skip``), not needed
#: yet, or a released version/image (version mode, nothing to build).
BuildState = Literal["built", "cached", "unbuildable", "not built", "released"]
SearchStatus = Literal["running", "confident", "budget spent"]


@dataclass(frozen=True)
class CandidateRow:
    """One candidate of a recorded search, in list order (``position`` from 0)."""

    position: int
    ref: str  # full commit sha, or the version/image
    short: str  # abbreviated sha, or the version
    subject: str  # commit subject line ("" for versions)
    build: BuildState
    image: str | None
    build_log: str | None  # path of the kept build log
    cycles: int
    failing_cycles: int
    tries: int
    posterior: float


@dataclass(frozen=True)
class ProbeRow:
    """One probe of a recorded search: where it ran, what it saw, where it left the search."""

    probe: int  # 1-based, in the order run
    position: int
    ref: str
    sweep_id: str  # its trials are in the store under this sweep
    cycles: int
    failing_cycles: int
    tries: int
    best_ref: str  # the most probable culprit after this probe
    best_posterior: float


@dataclass(frozen=True)
class SearchRecord:
    """A culprit search as stored: its settings, every candidate and every probe."""

    search_id: str
    kind: Literal["commits", "versions"]
    repo: str | None
    good: str
    bad: str
    direction: Direction
    confidence: float
    max_tries: int
    tries_per_cycle: int
    status: SearchStatus
    candidates: tuple[CandidateRow, ...]
    probes: tuple[ProbeRow, ...]

    @property
    def tries(self) -> int:
        return sum(p.tries for p in self.probes)

    @property
    def best(self) -> CandidateRow:
        return max(self.candidates, key=lambda c: (c.posterior, -c.position))

    def boundary(self) -> tuple[str, str]:
        """(the candidate before the best one, the best one), in list order; before the
        first candidate stands the range's older end (``good`` when it broke,
        ``bad`` when it fixed)."""
        top = self.best
        end = self.good if self.direction == "broke" else self.bad
        return (self.candidates[top.position - 1].ref if top.position else end), top.ref

    def statement(self) -> str:
        """``culprit: <short> "<subject>" (posterior 0.97; 412 tries over 5 probes)``."""
        top = self.best
        word = "culprit" if self.status == "confident" else "best candidate so far"
        subject = f' "{top.subject}"' if top.subject else ""
        return (
            f"{word}: {top.short}{subject} (posterior {top.posterior:.2f}; "
            f"{self.tries} tries over {len(self.probes)} probes)"
        )
