"""The report's cells and verdicts: each cell's rate, each version's verdict, the comparisons.

"Results per cell", "Verdict per version" (or "No usable trials"),
"Comparisons" and its odds ratios.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pandas as pd

from .report_format import ALPHA, MAX_RATE, _cell, _design_effect, _interval, _table
from .stats import (
    CLEAN_BOUND_ASSUMES,
    compare,
    cycle_rate,
    failure_model,
    format_p,
    format_pct,
    logistic_fit,
    rates_by,
    tries_for_upper_bound,
)

_MAX_PAIRS_VERSIONS = 6
_CYCLE_RATE_INPUTS = frozenset(
    {"run_id", "trial", "since_reset", "cycle", "reset_freq", "counted", "failed"}
)


def cells_section(cells: pd.DataFrame) -> list[str]:
    """Each cell's counts and rate, two intervals and the design effect (``rates_by``)."""
    conf = f"{100 * (1 - ALPHA):g}%"
    lines = ["", "## Results per cell", ""]
    lines.append(
        _table(
            [
                "Cell",
                "Tries",
                "Reset cycles",
                "Failures",
                "Build errors",
                "Infra errors",
                "Rate",
                f"{conf} interval (cycles as clusters)",
                "Design effect",
                f"{conf} Wilson (independent tries)",
            ],
            [
                [
                    f"`{r.cell}`",
                    r.tries,
                    r.cycles,
                    r.failures,
                    r.build_errors,
                    r.infra_errors,
                    format_pct(r.rate) if r.tries else "–",
                    _interval(r.ci_low, r.ci_high, r.tries),
                    _design_effect(r.design_effect),
                    _interval(r.wilson_low, r.wilson_high, r.tries),
                ]
                for r in cells.itertuples(index=False)
            ],
            "lrrrrrrrrr",
        )
    )
    lines += [
        "",
        "Tries count only builds that finished (`ok` or `missing_layer`). Tries that share "
        "a BuildKit state between two resets are not independent, so the reset cycle is the "
        f"unit of replication: the {conf} interval treats cycles as clusters (binomial GLM "
        "with cluster-robust covariance, never narrower than Wilson's). The design effect is "
        "its variance over the binomial one (1 when every try is its own cycle, K = 1); "
        "without a failure the upper end counts complete cycles. The Wilson interval beside "
        "it assumes independent tries and is too narrow when failures cluster.",
    ]
    return lines


def no_usable_section(df: pd.DataFrame) -> list[str]:
    """The verdict when no try finished: how many errors, and the most frequent ones."""
    counts = df["outcome"].value_counts()
    lines = [
        "",
        "## Verdict",
        "",
        "**No usable trials**: every try ended in an error before its output could be "
        "checked, so these data say nothing about the bug "
        f"({int(counts.get('build_error', 0))} build errors, "
        f"{int(counts.get('infra_error', 0))} infra errors).",
    ]
    details = Counter(
        str(d).strip().splitlines()[0][:160]
        for d in df["detail"]
        if isinstance(d, str) and d.strip()
    )
    if details:
        lines += ["", "Most frequent error summaries:", ""]
        lines += [f"- {n}× `{_cell(text)}`" for text, n in details.most_common(3)]
    return lines


def verdicts_section(df: pd.DataFrame) -> list[str]:
    """Each version affected, bounded clean, or short of evidence (``rates_by`` verdicts)."""
    # a version's rate reads these: filter them, not every column of a million rows
    rate_columns = [c for c in df.columns if c in _CYCLE_RATE_INPUTS]
    table = rates_by(df, "version_label", alpha=ALPHA, max_rate=MAX_RATE)
    lines = ["", "## Verdict per version", ""]
    for r in table.itertuples(index=False):
        label = str(r.version_label)
        if "<-" in label:
            importer, exporter = label.split("<-", 1)
            label = f"{importer} importing a cache exported by {exporter}"
        head, _, evidence = str(r.verdict).partition(" (")
        evidence = evidence.rstrip(")")
        if head == "affected":
            part = df.loc[df["version_label"] == r.version_label, rate_columns]
            lines.append(f"- **{label}**: affected — {cycle_rate(part, alpha=ALPHA).describe()}")
        elif head == "no failure seen":
            lines.append(f"- **{label}**: {head} — {evidence}")
        elif head == "not enough evidence":
            need = tries_for_upper_bound(MAX_RATE, ALPHA)
            unit = "clean tries" if r.tries == r.cycles else "complete clean reset cycles"
            lines.append(
                f"- **{label}**: {head} — {evidence}; {need} {unit} would bound it "
                f"below {format_pct(MAX_RATE)}"
            )
        else:
            lines.append(f"- **{label}**: {r.verdict}")
    lines += [
        "",
        "A single lost layer proves a version affected; a clean version is bounded, "
        f"not proven fixed (exact one-sided {100 * (1 - ALPHA):g}% upper bound). What the "
        f"bound assumes: {CLEAN_BOUND_ASSUMES}. For reference, moby/buildkit #1980 and #2198 "
        "report v0.8.0–v0.9.0 affected and v0.9.1 fixed.",
    ]
    return lines


def comparisons_section(df: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """Pairwise tests between versions, the reset-frequency fit and the odds ratios."""
    lines = ["", "## Comparisons", ""]
    usable = cells[cells["tries"] > 0]
    if len(usable) < 2:
        return [*lines, "Only one cell has usable tries, so there is nothing to compare."]
    versions = rates_by(df, "version_label", alpha=ALPHA)
    versions = versions[versions["tries"] > 0]
    if len(versions) >= 2 and len(versions) <= _MAX_PAIRS_VERSIONS:
        rows, methods = [], set()
        for a, b in combinations(versions.itertuples(index=False), 2):
            c = compare(
                df[df["version_label"] == a.version_label],
                df[df["version_label"] == b.version_label],
            )
            methods.add(c.method)
            rows.append(
                [
                    f"`{a.version_label}` vs `{b.version_label}`",
                    f"{a.failures}/{a.tries}",
                    f"{b.failures}/{b.tries}",
                    _METHOD_NAMES.get(c.method, c.method),
                    format_p(c.pvalue),
                ]
            )
        lines.append(_table(["Versions", "Failures A", "Failures B", "Test", "p"], rows, "lrrlr"))
        lines += [
            "",
            "Two-sided tests of equal failure probability, pooled over each version's cells: "
            "a cluster-robust t test with reset cycles as clusters (runs, when each version "
            "has two or more), or Fisher's exact test when every cycle holds one try. Not "
            "adjusted for multiple comparisons.",
        ]
    elif len(versions) < 2:
        lines.append("Only one version has usable tries, so versions are not compared.")
    else:
        lines.append(f"{len(versions)} versions: pairwise tests left out; see the table above.")
    fit = logistic_fit(df)
    if fit is not None:
        lines += ["", fit.describe()]
    elif df.loc[df["counted"], "reset_freq"].nunique() >= 2:
        lines += [
            "",
            "The data do not support a logistic fit of the reset-frequency effect "
            "(no failures, only failures, or complete separation).",
        ]
    lines += _odds_ratios(df)
    return lines


_METHOD_NAMES = {
    "fisher": "Fisher exact",
    "cycle-t": "cycle-robust t",
    "batch-t": "batch-robust t",
}


def _odds_ratios(df: pd.DataFrame) -> list[str]:
    """The odds-ratio table of ``failure_model``, or why the data cannot support it."""
    model = failure_model(df, alpha=ALPHA)
    if not model.terms or not model.failures:
        return []  # nothing varies among the affected versions' tries: nothing to say
    lines = ["", "### Odds ratios", ""]
    if not model.supported:
        return [*lines, f"{model.describe()}."]
    conf = f"{100 * (1 - ALPHA):g}%"
    lines.append(
        _table(
            ["Term", "Odds ratio", f"{conf} interval", "p"],
            [
                [
                    r["term"],
                    f"{r['odds_ratio']:.3g}",
                    f"{r['ci_low']:.3g}–{r['ci_high']:.3g}",
                    format_p(r["pvalue"]),
                ]
                for r in model.rows
            ],
            "lrrr",
        )
    )
    dropped = f" Left out: {', '.join(model.dropped)}." if model.dropped else ""
    lines += [
        "",
        f"Logistic regression `{model.formula}` on the {model.nobs} counted tries of the "
        f"versions that lost a layer ({', '.join(f'`{v}`' for v in model.versions)}); "
        "odds ratios against the first level of each categorical term, per doubling of K "
        "and per position since reset; intervals and Wald p-values treat reset cycles as "
        f"clusters. An interval that spans 1 means no effect detected, not no effect.{dropped}"
        + (f" Note: {model.note}." if model.note else ""),
    ]
    return lines
