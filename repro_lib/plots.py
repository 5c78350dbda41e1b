"""Matplotlib figures of trial results.

Every function takes a trials DataFrame (as from ``load_results``) and
returns a new ``matplotlib.figure.Figure`` built with the object-oriented API
(no pyplot state, so it works under the Agg backend, in scripts and in
notebooks). Empty data gives a figure with a centred "no data" note instead
of an exception. Rates count only ``ok`` and ``missing_layer`` tries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .results import derive, version_key
from .stats import (
    Method,
    fit_hazard,
    format_pct,
    rate_by_position,
    rates_by,
    tries_needed,
)

__all__ = [
    "plot_cumulative_detection",
    "plot_durations",
    "plot_heatmap",
    "plot_rate_by_position",
    "plot_rate_vs_reset",
]

_RATE_LABEL = "P(missing layer) per try"
_METHOD_NAMES = {"wilson": "Wilson", "beta": "Clopper-Pearson"}
_CYCLE_INTERVAL = "cycle-robust interval, reset cycles as clusters"


def _prepared(df: pd.DataFrame) -> pd.DataFrame:
    if df is None:
        return pd.DataFrame()
    if len(df.columns) and not {"counted", "failed", "version_label"} <= set(df.columns):
        df = derive(df)
    return df


def _counted(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "counted" not in df.columns:
        return df.iloc[0:0]
    return df[df["counted"]]


def _model_band(
    ax: Any, x: Any, mid: Any, band: pd.DataFrame, colour: Any, extrapolated: Any = None
) -> None:
    """A model's prediction with its ``low``–``high`` band, kept out of the legend: dashed
    where the data support it, dotted (with a fainter band) where it extrapolates."""
    xs = np.asarray(x, dtype=float)
    mid = np.asarray(mid, dtype=float)
    low, high = np.asarray(band["low"], dtype=float), np.asarray(band["high"], dtype=float)
    beyond = np.zeros(len(xs), bool) if extrapolated is None else np.asarray(extrapolated, bool)
    inside = ~beyond
    if inside.any():
        ax.plot(xs[inside], mid[inside], linestyle="--", color=colour, label="_nolegend_")
        ax.fill_between(
            xs[inside], low[inside], high[inside], color=colour, alpha=0.15, linewidth=0,
            label="_nolegend_",
        )  # fmt: skip
    if beyond.any():
        # start at the last supported point so the two pieces join
        start = max(int(np.argmax(beyond)) - 1, 0)
        part = slice(start, None)
        ax.plot(xs[part], mid[part], linestyle=":", color=colour, label="_nolegend_")
        ax.fill_between(
            xs[part], low[part], high[part], color=colour, alpha=0.06, linewidth=0,
            label="_nolegend_",
        )  # fmt: skip


def _no_data(title: str, message: str = "no data") -> Figure:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=14)
    ax.set_axis_off()
    return fig


def _conf(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _series_labels(df: pd.DataFrame) -> list[str]:
    return sorted(df["version_label"].dropna().unique(), key=version_key)


def _errorbars(table: pd.DataFrame) -> np.ndarray:
    rate = table["rate"].to_numpy(float)
    low = np.clip(rate - table["ci_low"].to_numpy(float), 0, None)
    high = np.clip(table["ci_high"].to_numpy(float) - rate, 0, None)
    return np.vstack([low, high])


def _finish_rate_axes(ax: Any, xlabel: str, title: str, alpha: float, interval: str) -> None:
    """Labels, limits and legend shared by the rate-with-error-bars plots."""
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_RATE_LABEL)
    ax.set_title(f"{title}\n(error bars: {_conf(alpha)} {interval})")
    ax.legend(title="BuildKit version")
    ax.grid(True, alpha=0.3)


_MODEL_INPUTS = frozenset(
    {"run_id", "trial", "since_reset", "cycle", "counted", "failed", "reset_freq", "version_label"}
)


def _models(
    d: pd.DataFrame, labels: list[str], model: bool | None, alpha: float, *, k_curve: bool = False
) -> dict:
    """Position models to draw, by version label: with ``model=None`` only for versions
    that lost a layer (a clean version's prediction is a flat zero) and, for a K-curve
    (``k_curve``), that were run at two or more reset frequencies (with one K the curve
    away from it is all extrapolation)."""
    if model is False:
        return {}
    out = {}
    # the models read a few columns: filter those, not every column of a million rows
    d = d[[c for c in d.columns if c in _MODEL_INPUTS]]
    for label in labels:
        part = d[d["version_label"] == label]
        if model is None and not part["failed"].any():
            continue
        if model is None and k_curve and part["reset_freq"].nunique() < 2:
            continue
        fitted = fit_hazard(part, label, alpha=alpha)
        if fitted is not None:
            out[label] = fitted
    return out


def plot_rate_vs_reset(
    df: pd.DataFrame,
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    model: bool | None = None,
) -> Figure:
    """Failure probability against reset frequency, one line per version.

    x: tries per fresh BuildKit state (``reset_freq``, log2 axis); y: observed
    rate with its two-sided ``1 - alpha`` interval as error bars.

    Error bars are cycle-robust intervals (``stats.rates_by``): tries of one
    reset cycle are not independent.

    ``model``: draw the rate the position model predicts (``stats.fit_hazard``:
    ``r(K) = mean h(1..K)``, with its ``1 - alpha`` simulation band) over every
    ``K`` from 1 to the version's largest K: dashed where every position of the
    cycle was observed, dotted where the curve extrapolates beyond the highest
    position run. ``None`` (default): for each version that lost a layer, was
    run at two or more K and whose data support a fit; ``True``: for every
    version with a fit; ``False``: never.
    """
    title = "Missing-layer probability vs reset frequency"
    d = _counted(_prepared(df))
    d = d[d["reset_freq"].notna()] if not d.empty else d
    if d.empty:
        return _no_data(title)
    table = rates_by(d, ["version_label", "reset_freq"], method=method, alpha=alpha)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    labels = _series_labels(table)
    fitted = _models(d, labels, model, alpha, k_curve=True)
    extrapolating = False
    for label in labels:
        t = table[table["version_label"] == label].sort_values("reset_freq")
        bars = ax.errorbar(
            t["reset_freq"].to_numpy(float),
            t["rate"].to_numpy(float),
            yerr=_errorbars(t),
            marker="o",
            capsize=3,
            label=str(label),
        )
        if label in fitted:
            colour = bars.lines[0].get_color()
            top = int(t["reset_freq"].max())
            # every K up to 64, then a geometric grid (the x axis is log2)
            grid = (
                np.unique(np.rint(np.geomspace(1, top, 64)).astype(int))
                if top > 64
                else np.arange(1, top + 1)
            )
            curve = fitted[label].k_curve(grid)
            _model_band(
                ax, curve["reset_freq"], curve["rate"], curve, colour, curve["extrapolated"]
            )
            extrapolating |= bool(curve["extrapolated"].any())
    ax.set_xscale("log", base=2)
    freqs = sorted(table["reset_freq"].astype(int).unique())
    ax.set_xticks(freqs, [str(f) for f in freqs])
    _finish_rate_axes(
        ax,
        "reset frequency (tries per fresh BuildKit state, log2 scale)",
        title,
        alpha,
        _CYCLE_INTERVAL,
    )
    if fitted:
        ax.set_title(
            ax.get_title()
            + f"\ndashed: position-model prediction, band {_conf(alpha)} (simulation)"
            + ("; dotted: extrapolated" if extrapolating else "")
        )
    return fig


def plot_heatmap(df: pd.DataFrame, *, alpha: float = 0.05) -> Figure:
    """Version × reset frequency grid coloured by failure rate, annotated ``k/n``.

    Cells without counted tries stay blank (grey).
    """
    title = "Missing-layer rate by version and reset frequency"
    d = _counted(_prepared(df))
    d = d[d["reset_freq"].notna()] if not d.empty else d
    if d.empty:
        return _no_data(title)
    table = rates_by(d, ["version_label", "reset_freq"], alpha=alpha)
    versions = _series_labels(table)
    freqs = sorted(table["reset_freq"].astype(int).unique())
    grid = np.full((len(versions), len(freqs)), np.nan)
    fig = Figure(figsize=(1.2 * len(freqs) + 3.0, 0.6 * len(versions) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    annotations = []
    for row in table.itertuples(index=False):
        i, j = versions.index(row.version_label), freqs.index(int(row.reset_freq))
        grid[i, j] = row.rate
        annotations.append((i, j, f"{row.failures}/{row.tries}", row.rate))
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, j, text, rate in annotations:
        colour = "white" if np.isfinite(rate) and rate > 0.6 else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour)
    ax.set_xticks(range(len(freqs)), [str(f) for f in freqs])
    ax.set_yticks(range(len(versions)), [str(v) for v in versions])
    ax.set_xlabel("reset frequency (tries per fresh BuildKit state)")
    ax.set_ylabel("BuildKit version")
    ax.set_title(f"{title}\n(cell text: failures/tries)")
    fig.colorbar(image, ax=ax, label="failure rate")
    return fig


def plot_rate_by_position(
    df: pd.DataFrame,
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    model: bool | None = None,
) -> Figure:
    """Failure rate by position since the last reset, one line per version.

    Each reset cycle has one try per position, so the error bars are Wilson
    intervals of independent tries. ``model`` as in ``plot_rate_vs_reset``:
    the fitted failure probability ``h(p)`` (``stats.fit_hazard``) dashed at
    the positions observed, with its ``1 - alpha`` band.
    """
    title = "Failure probability by position since the last reset"
    d = _counted(_prepared(df))
    d = d[d["since_reset"].notna()] if not d.empty else d
    if d.empty:
        return _no_data(title)
    table = rate_by_position(d, "version_label", method=method, alpha=alpha)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    labels = _series_labels(table)
    fitted = _models(d, labels, model, alpha)
    offsets = np.linspace(-0.15, 0.15, len(labels)) if len(labels) > 1 else [0.0]
    for label, offset in zip(labels, offsets, strict=True):
        t = table[table["version_label"] == label].sort_values("since_reset")
        bars = ax.errorbar(
            t["since_reset"].to_numpy(float) + offset,
            t["rate"].to_numpy(float),
            yerr=_errorbars(t),
            marker="o",
            capsize=3,
            label=str(label),
        )
        if label in fitted:
            colour = bars.lines[0].get_color()
            band = fitted[label].to_frame()
            _model_band(ax, band["position"] + offset, band["hazard"], band, colour)
    positions = sorted(table["since_reset"].astype(int).unique())
    if len(positions) <= 20:
        ax.set_xticks(positions, [str(p) for p in positions])
    _finish_rate_axes(
        ax,
        "position since the last reset (1 = first try on a fresh state)",
        title,
        alpha,
        f"{_METHOD_NAMES[method]} interval",
    )
    if fitted:
        ax.set_title(
            ax.get_title()
            + "\ndashed: fitted position model (own first position, logistic after), "
            + f"band {_conf(alpha)}"
        )
    return fig


def plot_cumulative_detection(
    df: pd.DataFrame,
    *,
    confidence: float = 0.95,
    max_tries: int | None = None,
    method: Method = "wilson",
    alpha: float = 0.05,
) -> Figure:
    """Probability of having seen at least one failure after ``n`` tries.

    For each version the curve is ``1 - (1 - p_hat) ** n`` from its observed
    rate; the shaded band uses the ends of the rate's interval. A dashed line
    marks ``confidence`` and a dot marks the tries needed to reach it.
    """
    title = "Chance of seeing the bug at least once"
    d = _counted(_prepared(df))
    if d.empty:
        return _no_data(title)
    table = rates_by(d, "version_label", method=method, alpha=alpha)
    if max_tries is None:
        # long enough for the slowest affected version's lower rate bound; the
        # upper bound of a clean version would stretch the axis for nothing
        affected = table[table["failures"] > 0]
        ends = affected["ci_low"] if len(affected) else table["ci_high"]
        needs = [tries_needed(r, confidence) for r in ends if r > 0]
        max_tries = int(min(max(max(needs, default=10) * 1.2, 10), 2000))
    n = np.arange(0, max_tries + 1)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for row in table.itertuples(index=False):
        curve = 1 - (1 - row.rate) ** n
        (line,) = ax.plot(n, curve, label=f"{row.version_label} ({format_pct(row.rate)}/try)")
        ax.fill_between(
            n,
            1 - (1 - row.ci_low) ** n,
            1 - (1 - row.ci_high) ** n,
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
        if row.rate > 0:
            need = tries_needed(row.rate, confidence)
            if need <= max_tries:
                ax.plot([need], [1 - (1 - row.rate) ** need], "o", color=line.get_color())
    ax.axhline(confidence, linestyle="--", color="grey", linewidth=1)
    ax.text(max_tries, confidence, f"{100 * confidence:g}%", ha="right", va="bottom", color="grey")
    ax.set_xlim(0, max_tries)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of tries")
    ax.set_ylabel("P(at least one missing layer)")
    ax.set_title(
        f"{title}\n(band: {_conf(alpha)} cycle-robust interval of the per-try rate; "
        "the curve assumes independent tries)"
    )
    ax.legend(title="BuildKit version", loc="lower right")
    ax.grid(True, alpha=0.3)
    return fig


#: percentiles drawn by ``plot_durations``: outer line, box, median
_DURATION_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def plot_durations(df: pd.DataFrame, *, by: str | Sequence[str] = ("backend", "mode")) -> Figure:
    """Seconds per try as quantile bands, one per backend/mode (all outcomes).

    Each band is a box from the 25th to the 75th percentile with the median
    marked, on a line from the 1st to the 99th percentile; the count of tries is
    printed above it. Nothing is drawn per try, so a million tries stay as
    readable (and as quick to draw) as twenty, where a box plot would drown in
    its outlier markers.
    """
    title = "Duration of one try"
    d = _prepared(df)
    if d.empty or "duration_s" not in d.columns or d["duration_s"].notna().sum() == 0:
        return _no_data(title)
    by = [by] if isinstance(by, str) else list(by)
    d = d[[*by, "duration_s"]][d["duration_s"].notna()]
    grouped = d.groupby(by, dropna=False, sort=False)["duration_s"]
    table = grouped.quantile(list(_DURATION_QUANTILES)).unstack()
    counts = grouped.size()
    groups = [
        (
            "/".join(str(k) for k in (key if isinstance(key, tuple) else (key,))),
            table.loc[key].to_numpy(float),
            int(counts.loc[key]),
        )
        for key in table.index
    ]
    groups.sort(key=lambda g: version_key(g[0]))
    fig = Figure(figsize=(max(5.0, 1.4 * len(groups) + 2.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    colour = matplotlib.colormaps["tab10"](0)
    for x, (_, (q01, q25, q50, q75, q99), n) in enumerate(groups, start=1):
        ax.vlines(x, q01, q99, color=colour, linewidth=1.2)
        ax.bar(x, q75 - q25, bottom=q25, width=0.5, color=colour, alpha=0.35, edgecolor=colour)
        ax.hlines(q50, x - 0.25, x + 0.25, color="black", linewidth=2)
        ax.annotate(
            f"n = {n:,}",
            (x, q99),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(1, len(groups) + 1), [g[0] for g in groups])
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_xlabel("/".join(by))
    ax.set_ylabel("seconds per try")
    ax.set_title(title)
    ax.text(
        0.99,
        0.01,
        "box: 25th–75th percentile, bar: median, line: 1st–99th percentile",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.4",
    )
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def lost_steps_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per missing-layer try: its run, trial, position, what was missing and lost."""
    d = _prepared(df)
    columns = ["run_id", "trial", "version_label", "since_reset", "missing", "lost_steps"]
    if d.empty or "lost_steps" not in d.columns:
        return pd.DataFrame(columns=[*columns, "lost_digests", "lost_reference"])
    failed = d[d["failed"]]
    return failed[[*columns, "lost_digests", "lost_reference"]].reset_index(drop=True)


def plot_lost_steps(df: pd.DataFrame) -> Figure:
    """Failures by lost Dockerfile step, one bar group per version."""
    title = "Failures by lost Dockerfile step"
    table = lost_steps_table(df)
    if table.empty:
        return _no_data(title, "no missing-layer failure")
    rows = [
        (version, step if len(step) <= 40 else step[:37] + "…")
        for version, steps in zip(table["version_label"], table["lost_steps"], strict=True)
        for step in (steps or ["(not recorded)"])
    ]
    counts = pd.DataFrame(rows, columns=["version", "step"]).value_counts().unstack(fill_value=0)
    counts = counts.loc[sorted(counts.index, key=version_key)]
    fig = Figure(figsize=(max(5.5, 1.2 * len(counts) + 3.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(counts.columns))
    for i, step in enumerate(counts.columns):
        xs = np.arange(len(counts)) + i * width
        ax.bar(xs, counts[step].to_numpy(), width, label=step)
    ax.set_xticks(np.arange(len(counts)) + width * (len(counts.columns) - 1) / 2)
    ax.set_xticklabels(counts.index)
    ax.set_xlabel("version")
    ax.set_ylabel("missing-layer failures")
    ax.set_title(title)
    ax.legend(title="lost step", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return fig
