"""Sequential stopping of a sweep cell and plain-language verdicts."""

from __future__ import annotations

from dataclasses import dataclass

from ._common import _check_alpha, _check_counts, _confidence, format_pct
from .rates import _lower_bound, tries_for_upper_bound, upper_bound


# stopping and verdicts ----------------------------------------------------
@dataclass(frozen=True)
class StopDecision:
    """Whether a cell of a sweep has enough evidence to stop, and why.

    Attributes
    ----------
    stop : bool
    reason : str
        Plain language, suitable for a log line.
    """

    stop: bool
    reason: str

    def __bool__(self) -> bool:
        return self.stop


def _check_cycles(cycles: int | None, n: int) -> int:
    """Complete cycles, ``n`` when None (every try its own cycle, ``K = 1``)."""
    if cycles is None:
        return n
    if int(cycles) != cycles or not 0 <= cycles <= n:
        raise ValueError(f"need 0 <= cycles <= n, got cycles={cycles}, n={n}")
    return int(cycles)


def _clean_evidence(n: int, cycles: int, bound: float, alpha: float) -> str:
    """``"0 of 299, 95% upper bound 1.0%"`` or, counting cycles, what the bound rests on."""
    conf = _confidence(alpha)
    if cycles == n:
        return f"0 of {n}, {conf} upper bound {format_pct(bound)}"
    return (
        f"0 of {n} in {cycles} complete reset cycles, {conf} upper bound {format_pct(bound)} "
        "counting cycles"
    )


CLEAN_BOUND_ASSUMES = (
    "a clean bound counts complete reset cycles: 0 failures in C cycles bounds the chance "
    "that a cycle shows the bug, and so the per-try rate, below 1 - alpha^(1/C); it assumes "
    "independent cycles and allows any dependence between the tries of one cycle "
    "(with K = 1 every try is a cycle)"
)
"""What a clean verdict's upper bound assumes, for output that states it."""


def should_stop(
    k: int,
    n: int,
    *,
    max_rate: float = 0.01,
    alpha: float = 0.05,
    min_tries: int = 1,
    min_failures: int = 1,
    cycles: int | None = None,
) -> StopDecision:
    """Early-stopping rule for one cell of a sweep.

    Stop when either

    * ``k >= min_failures`` and the exact one-sided ``1 - alpha`` lower bound
      of the rate is above 0 ("failure seen, interval excludes 0"); or
    * ``k == 0`` and the exact one-sided ``1 - alpha`` upper bound from the
      ``cycles`` complete clean reset cycles is below ``max_rate`` ("clean").

    and never before ``min_tries`` counted tries.

    Parameters
    ----------
    k, n : int
        Failures and counted tries so far.
    max_rate : float, default 0.01
        Rate below which a clean cell counts as "no failure seen".
    alpha : float, default 0.05
    min_tries : int, default 1
    min_failures : int, default 1
        Failures to collect before stopping an affected cell; raise it to get
        a tighter estimate of the rate rather than mere detection.
    cycles : int, optional
        Complete reset cycles among the ``n`` tries (``stats.complete_cycles``).
        None: every try is its own cycle (``K = 1``).

    Returns
    -------
    StopDecision

    Notes
    -----
    A single missing layer proves the version affected (the verification is
    deterministic), and for ``k >= 1`` the exact lower bound is always above
    0, so with the defaults an affected cell stops at its first failure.

    The clean rule counts cycles, not tries (``CLEAN_BOUND_ASSUMES``). Tries in
    one cycle share a BuildKit state and their failures cluster, so "0 of n
    tries" is likelier than ``(1 - p)^n`` and a bound from tries would stop too
    early: at a true rate equal to ``max_rate = 0.05``, with beta-binomial
    cycles (within-cycle correlation 0.15), it says "clean" in 8% of cells at
    ``K = 4`` and 22% at ``K = 16`` instead of at most 5% (simulated in
    ``tests/test_cycles.py``). With ``C`` complete clean
    cycles the chance ``q`` that a cycle shows the bug is below
    ``1 - alpha^(1/C)``, whatever the dependence within a cycle, and the
    per-try rate of a full cycle is at most ``q`` (a cycle with a failure has
    at most ``K`` of them). It needs ``tries_for_upper_bound(max_rate, alpha)``
    cycles (299 for 1% at 95%), i.e. ``K`` times as many tries. Stopping on the
    data biases the final ``p_hat`` of a stopped cell upwards; report
    intervals, not point estimates.
    """
    k, n = _check_counts(k, n)
    alpha = _check_alpha(alpha)
    cycles = _check_cycles(cycles, n)
    conf = _confidence(alpha)
    if n < min_tries:
        return StopDecision(False, f"continue: {n} of at least {min_tries} tries done")
    if k > 0:
        low = _lower_bound(k, n, alpha)
        if k >= min_failures and low > 0:
            return StopDecision(
                True,
                f"failure seen: {k} of {n}, {conf} lower bound {format_pct(low)} excludes 0",
            )
        return StopDecision(False, f"continue: {k} of {min_failures} wanted failures seen")
    bound = upper_bound(cycles, alpha)
    evidence = _clean_evidence(n, cycles, bound, alpha)
    if bound < max_rate:
        return StopDecision(True, f"clean: {evidence}, below {format_pct(max_rate)}")
    need = tries_for_upper_bound(max_rate, alpha)
    unit = "clean tries" if cycles == n else "complete clean cycles"
    return StopDecision(
        False,
        f"continue: {evidence}, not yet below {format_pct(max_rate)} (needs {need} {unit})",
    )


def verdict(
    k: int, n: int, *, max_rate: float = 0.01, alpha: float = 0.05, cycles: int | None = None
) -> str:
    """A short plain-language verdict for one version (or cell).

    Returns one of

    * ``"no usable trials"`` -- ``n == 0`` (e.g. only build errors);
    * ``"affected (k of n tries lost a layer)"`` -- at least one failure;
    * ``"no failure seen (0 of n, 95% upper bound X%)"`` -- ``k == 0`` and the
      exact one-sided ``1 - alpha`` upper bound ``X`` is below ``max_rate``;
    * ``"not enough evidence (0 of n, 95% upper bound X%)"`` -- ``k == 0`` but
      too few tries (cycles) to bound the rate below ``max_rate``.

    ``cycles`` (complete reset cycles) as in ``should_stop``: with ``K > 1``
    the bound counts cycles, and the text says so ("0 of 100 in 25 complete
    reset cycles, 95% upper bound 11.3% counting cycles").
    """
    k, n = _check_counts(k, n)
    cycles = _check_cycles(cycles, n)
    if n == 0:
        return "no usable trials"
    if k > 0:
        return f"affected ({k} of {n} tries lost a layer)"
    bound = upper_bound(cycles, alpha)
    evidence = _clean_evidence(n, cycles, bound, alpha)
    if bound < max_rate:
        return f"no failure seen ({evidence})"
    return f"not enough evidence ({evidence})"
