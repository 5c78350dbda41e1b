"""Failure probabilities of flaky builds: intervals, comparisons, models, trials needed.

Every try either loses a layer (``missing_layer``) or not (``ok``). Build and
infra errors are not trials of the bug and are left out of every count here
(see ``repro_lib.results``).

Tries that share one BuildKit state between two resets are not independent: in
the findings dataset a failure about doubles the odds of a later failure in the
same cycle. The **reset cycle is the unit of replication**: every interval,
test and model that pools tries treats cycles (key ``(run_id, cycle)``) as
clusters, and a clean verdict counts complete cycles. With ``K = 1`` every try
is its own cycle and the binomial methods apply unchanged.

The package, one module per seam:

* ``rates``: one proportion (``failure_rate``: Wilson or Clopper-Pearson, which
  assume independent tries), exact one-sided bounds, tries needed;
* ``cycles``: the cycle key (``cycle_numbers``, ``cycle_groups``,
  ``complete_cycles``) and cycle-robust rates (``cycle_rate``,
  ``clustered_rate``: a cluster-robust GLM, with the design effect);
* ``dependence``: ``failure_clustering``, do failures cluster within a reset
  cycle (and, as a control, across a reset)?
* ``stopping``: ``should_stop`` and ``verdict``, whose clean bound counts
  complete cycles (``CLEAN_BOUND_ASSUMES``);
* ``comparisons``: ``compare`` (a cycle- or batch-robust t test, or Fisher's
  exact test for independent tries) and ``group_agreement``;
* ``position``: the failure probability by position since reset
  (``fit_hazard``/``HazardModel``);
* ``trend``: is it constant at positions >= 2, or does it trend
  (``hazard_trend_test``)?
* ``kcurve``: the K-curve as a held-out prediction with a likelihood-ratio
  test of K beyond the position (``k_curve_fit``);
* ``batches``: runs as replicates (``batch_heterogeneity`` with Tarone's test,
  ``batch_rate``);
* ``regression``: ``logistic_fit`` and ``failure_model`` (odds ratios with
  cycles as clusters, or the term that separates the data);
* ``tables``: ``rates_by``, ``rate_by_position``, ``findings_table``.

References
----------
.. [1] Brown, L. D., Cai, T. T. and DasGupta, A. (2001). Interval estimation
   for a binomial proportion. Statistical Science 16(2), 101-133.
.. [2] Clopper, C. J. and Pearson, E. S. (1934). The use of confidence or
   fiducial limits illustrated in the case of the binomial. Biometrika 26,
   404-413.
.. [3] Fisher, R. A. (1922). On the interpretation of chi-squared from
   contingency tables, and the calculation of P. J. R. Stat. Soc. 85, 87-94.
.. [4] Cameron, A. C. and Miller, D. L. (2015). A practitioner's guide to
   cluster-robust inference. J. Human Resources 50(2), 317-372.
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
from .kcurve import KCurveFit, k_curve_fit
from .position import HazardModel, fit_hazard
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
from .trend import TrendTest, hazard_trend_test

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
