"""The report's dependence and position sections: clustering within a cycle, rate by position.

"Do failures cluster within a reset cycle?" and "Failure probability by
position since reset" with its position model and K-curve.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .report_format import ALPHA, _interval, _table
from .results import version_key
from .stats import (
    failure_clustering,
    format_p,
    format_pct,
    hazard_trend_test,
    k_curve_fit,
    rate_by_position,
)


def clustering_section(counted: pd.DataFrame) -> list[str]:
    """Do failures cluster within a reset cycle? The dependence analysis, when it applies."""
    result = failure_clustering(counted, alpha=ALPHA)
    if result.within is None:
        return []
    lines = ["", "## Do failures cluster within a reset cycle?", "", result.describe()]
    rows = [
        [
            e.comparison,
            f"{e.odds_ratio:.3g}" if e.estimated else "–",
            f"{e.ci_low:.3g}–{e.ci_high:.3g}" if e.estimated else "–",
            format_p(e.pvalue) if e.estimated else e.note,
            e.tries,
            e.cycles,
        ]
        for e in (result.within, result.across)
        if e is not None
    ]
    conf = f"{100 * (1 - ALPHA):g}%"
    lines += [
        "",
        _table(
            ["Failure before the try", "Odds ratio", f"{conf} interval", "p", "Tries", "Cycles"],
            rows,
            "lrrrrr",
        ),
        "",
        "Logistic regressions on the tries at positions ≥ 2 of the runs that lost a layer, "
        "adjusted for the position (a category) and the run; reset cycles as clusters. The "
        "second row, a failure in the previous cycle of the same run, is the control: a reset "
        "should wipe whatever a failure leaves behind.",
    ]
    return lines


def positions_section(counted: pd.DataFrame) -> list[str]:
    """The rate at each position since reset, pooled over affected versions, and its models."""
    lines = ["", "## Failure probability by position since reset", ""]
    failing = counted.loc[counted["failed"], "version_label"].unique()
    if len(failing) == 0:
        return [*lines, "No try lost a layer, so there are no failure positions to show."]
    d = counted[counted["version_label"].isin(failing)]
    table = rate_by_position(d, alpha=ALPHA)
    lines.append(
        _table(
            [
                "Position since reset",
                "Tries",
                "Failures",
                "Rate",
                f"{100 * (1 - ALPHA):g}% interval",
            ],
            [
                [
                    int(r.since_reset),
                    r.tries,
                    r.failures,
                    format_pct(r.rate),
                    _interval(r.ci_low, r.ci_high, r.tries),
                ]
                for r in table.itertuples(index=False)
                if pd.notna(r.since_reset)
            ],
            "rrrrr",
        )
    )
    lines += [
        "",
        "Pooled over the versions that lost a layer at least once ("
        + ", ".join(f"`{v}`" for v in sorted(failing, key=version_key))
        + "). Position 1 is the first try on a fresh BuildKit state. A failure does not end "
        "the cycle: the next try reuses the state. Each cycle has one try per position, so "
        "the interval at one position is Wilson's.",
    ]
    lines += _position_models(counted, failing)
    return lines


def _position_models(counted: pd.DataFrame, failing: Any) -> list[str]:
    """Per affected version: trend at positions >= 2, position model and the K-curve."""
    versions = sorted((str(v) for v in failing), key=version_key)
    d = counted[counted["version_label"].isin(versions)]
    trends = [t for t in hazard_trend_test(d, alpha=ALPHA) if t.tested]
    fits = [f for f in (k_curve_fit(d, v, alpha=ALPHA) for v in versions) if f is not None]
    if not trends and not fits:
        return []
    lines = ["", "### The position model and the rate at each reset frequency", ""]
    if trends:
        lines.append(
            "Constant failure probability at positions ≥ 2 against a trend in the position "
            "(logistic model; the cycle-robust test is the one to read, the likelihood-ratio "
            "test beside it assumes independent tries):"
        )
        lines += [""] + [f"- {t.describe()}" for t in trends]
    if fits:
        lines += [
            "",
            "Position model: position 1 on its own, logistic in the position after it, reset "
            "cycles as clusters. The rate at reset frequency K is predicted as the mean failure "
            "probability over a cycle, (1/K)·Σ P(fail at p) for p = 1..K. Where several K were "
            "run, the model is fitted on every other K and predicts the rest (held out); the "
            "likelihood-ratio test asks whether K matters beyond the position:",
            "",
        ]
        for f in fits:
            lines.append(f"- {f.model.describe()}")
            lines.append(f"  - {f.describe()}.")
        conf = f"{100 * (1 - ALPHA):g}%"
        rows = [
            [
                f"`{f.version}`",
                int(r["reset_freq"]),
                f"{r['failures']}/{r['tries']}",
                f"{format_pct(r['observed'])} ({format_pct(r['observed_low'])}–"
                f"{format_pct(r['observed_high'])})",
                format_pct(r["predicted"]),
                f"{format_pct(r['low'])}–{format_pct(r['high'])}",
                ("held out" if r["held_out"] else "in-sample")
                + (", extrapolated" if r["extrapolated"] else ""),
            ]
            for f in fits
            for r in f.table
        ]
        lines += [
            "",
            _table(
                [
                    "Version",
                    "K",
                    "Failures",
                    f"Observed ({conf}, cycles as clusters)",
                    "Predicted",
                    f"{conf} band of r(K)",
                    "Check",
                ],
                rows,
                "lrrrrrl",
            ),
            "",
            "Predicted: the model's expected rate for the positions each cell ran; the band "
            "is that of the full-cycle rate r(K), by simulation from the fitted coefficients. "
            "In-sample rows were used to fit the model, so agreement there is not evidence; "
            "extrapolated rows reach beyond the highest position the model was fitted on.",
        ]
    return lines
