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


def should_stop(
    k: int,
    n: int,
    *,
    max_rate: float = 0.01,
    alpha: float = 0.05,
    min_tries: int = 1,
    min_failures: int = 1,
) -> StopDecision:
    """Early-stopping rule for one cell of a sweep.

    Stop when either

    * ``k >= min_failures`` and the exact one-sided ``1 - alpha`` lower bound
      of the rate is above 0 ("failure seen, interval excludes 0"); or
    * ``k == 0`` and the exact one-sided ``1 - alpha`` upper bound is below
      ``max_rate`` ("clean: p < max_rate").

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

    Returns
    -------
    StopDecision

    Notes
    -----
    A single missing layer proves the version affected (the verification is
    deterministic), and for ``k >= 1`` the exact lower bound is always above
    0, so with the defaults an affected cell stops at its first failure. The
    clean rule needs ``tries_for_upper_bound(max_rate, alpha)`` tries
    (299 for 1% at 95%). Stopping on the data biases the final ``p_hat``
    of a stopped cell upwards; report intervals, not point estimates.
    """
    k, n = _check_counts(k, n)
    alpha = _check_alpha(alpha)
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
    bound = upper_bound(n, alpha)
    if bound < max_rate:
        return StopDecision(
            True,
            f"clean: 0 of {n} → p < {format_pct(bound)} ({conf} upper bound), below "
            f"{format_pct(max_rate)}",
        )
    return StopDecision(
        False,
        f"continue: 0 of {n}, p < {format_pct(bound)} not yet below {format_pct(max_rate)}"
        f" (needs {tries_for_upper_bound(max_rate, alpha)} clean tries)",
    )


def verdict(k: int, n: int, *, max_rate: float = 0.01, alpha: float = 0.05) -> str:
    """A short plain-language verdict for one version (or cell).

    Returns one of

    * ``"no usable trials"`` -- ``n == 0`` (e.g. only build errors);
    * ``"affected (k of n tries lost a layer)"`` -- at least one failure;
    * ``"no failure seen (p < X%)"`` -- ``k == 0`` and the exact one-sided
      ``1 - alpha`` upper bound ``X`` is below ``max_rate``;
    * ``"not enough evidence (0 of n, p < X%)"`` -- ``k == 0`` but too few
      tries to bound the rate below ``max_rate``.
    """
    k, n = _check_counts(k, n)
    if n == 0:
        return "no usable trials"
    if k > 0:
        return f"affected ({k} of {n} tries lost a layer)"
    bound = upper_bound(n, alpha)
    if bound < max_rate:
        return f"no failure seen (p < {format_pct(bound)})"
    return f"not enough evidence (0 of {n}, p < {format_pct(bound)})"
