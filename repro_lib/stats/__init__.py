"""Failure probabilities of flaky builds: intervals, comparisons, trials needed.

Every try is treated as a Bernoulli trial: it either loses a layer
(``missing_layer``) or not (``ok``). Build and infra errors are not trials of
the bug and are left out of every count here (see ``repro_lib.results``).

The binomial model assumes tries are independent with one common failure
probability. Tries that share a BuildKit state between resets may not be
independent (that is what ``rate_by_position`` and ``logistic_fit`` look at),
so intervals are best read per cell, where the reset schedule is fixed.

Models beyond one proportion:

* hazard by position since reset: ``hazard_trend_test`` (constant hazard at
  positions >= 2 against a trend), ``fit_hazard`` (``HazardModel``: the K-curve
  ``r(K) = mean h(1..K)`` with a simulation band) and ``k_curve_fit`` (whether
  the observed K-curve departs from the prediction);
* batches (runs) as the unit of replication: ``batch_heterogeneity``
  (homogeneity and Tarone's over-dispersion test per cell), ``batch_rate``
  (a cluster-robust interval) and the batch-level test in ``compare``;
* ``failure_model``: ``failed ~ version + log2(K) + position + cache + mode``
  with odds ratios, or a message naming the term that separates the data.

References
----------
.. [1] Brown, L. D., Cai, T. T. and DasGupta, A. (2001). Interval estimation
   for a binomial proportion. Statistical Science 16(2), 101-133.
.. [2] Clopper, C. J. and Pearson, E. S. (1934). The use of confidence or
   fiducial limits illustrated in the case of the binomial. Biometrika 26,
   404-413.
.. [3] Fisher, R. A. (1922). On the interpretation of chi-squared from
   contingency tables, and the calculation of P. J. R. Stat. Soc. 85, 87-94.
"""

from __future__ import annotations

from ._common import Method, format_p, format_pct
from .batches import (
    BatchHeterogeneity,
    BatchRate,
    batch_heterogeneity,
    batch_rate,
    tarone_test,
)
from .comparisons import Comparison, GroupAgreement, compare, group_agreement
from .cycles import (
    ClusteredRate,
    clustered_rate,
    complete_cycles,
    cycle_groups,
    cycle_numbers,
    cycle_rate,
    records_frame,
)
from .dependence import DependenceEffect, FailureClustering, failure_clustering
from .position import (
    HazardModel,
    KCurveFit,
    TrendTest,
    fit_hazard,
    hazard_trend_test,
    k_curve_fit,
)
from .rates import (
    FailureRate,
    failure_rate,
    tries_for_upper_bound,
    tries_needed,
    upper_bound,
)
from .regression import FailureModel, LogisticFit, failure_model, logistic_fit
from .stopping import CLEAN_BOUND_ASSUMES, StopDecision, should_stop, verdict
from .tables import RATE_COLUMNS, findings_table, rate_by_position, rates_by, results_frame

__all__ = [
    "records_frame",
    "failure_clustering",
    "FailureClustering",
    "DependenceEffect",
    "format_p",
    "cycle_rate",
    "cycle_numbers",
    "cycle_groups",
    "complete_cycles",
    "clustered_rate",
    "ClusteredRate",
    "CLEAN_BOUND_ASSUMES",
    "RATE_COLUMNS",
    "BatchHeterogeneity",
    "BatchRate",
    "Comparison",
    "FailureModel",
    "FailureRate",
    "GroupAgreement",
    "HazardModel",
    "KCurveFit",
    "LogisticFit",
    "Method",
    "StopDecision",
    "TrendTest",
    "batch_heterogeneity",
    "batch_rate",
    "compare",
    "failure_model",
    "failure_rate",
    "findings_table",
    "fit_hazard",
    "format_pct",
    "group_agreement",
    "hazard_trend_test",
    "k_curve_fit",
    "logistic_fit",
    "rate_by_position",
    "rates_by",
    "results_frame",
    "should_stop",
    "tarone_test",
    "tries_for_upper_bound",
    "tries_needed",
    "upper_bound",
    "verdict",
]
