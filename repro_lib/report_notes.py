"""The report's Notes: errors left out, tries without the cache, hosts and batches pooled.

Cells run on several hosts or recorded in several batches are checked for
agreement before their tries are pooled; a note says which disagree.
"""

from __future__ import annotations

import pandas as pd

from . import stats
from .report_format import ALPHA
from .stats import batch_heterogeneity, batch_rate


def _host_notes(df: pd.DataFrame) -> list[str]:
    """Cells run on several hosts: say whether the hosts agree before pooling them."""
    checks = stats.group_agreement(df, by="host")
    if not checks:
        return []
    split = [c for c in checks if c.disagree()]
    notes = [
        f"Hosts disagree in cell {c.cell} ({c.describe()}); its pooled rate mixes hosts "
        "that behave differently."
        for c in split
    ]
    agree = len(checks) - len(split)
    if agree:
        notes.append(
            f"{agree} cell(s) ran on several hosts whose failure rates agree "
            "(reset cycles with a failure, Fisher's exact test for two hosts, chi-square for "
            "more; p ≥ 0.05), so they are pooled."
        )
    return notes


def _batch_notes(df: pd.DataFrame) -> list[str]:
    """Cells recorded in several batches (runs): flag those whose batches disagree."""
    checks = batch_heterogeneity(df)
    if not checks:
        return []
    split = [c for c in checks if c.disagree(ALPHA) or c.overdispersed(ALPHA)]
    notes = []
    for c in split:
        column = "configuration" if "configuration" in df.columns else "cell"
        part = df[(df[column] == c.cell) & df["counted"]]
        robust = batch_rate(part, alpha=ALPHA)
        notes.append(
            f"Batches disagree in cell {c.cell} ({c.describe()}): its failure probability "
            "varies between runs beyond binomial noise, so its binomial interval is too "
            f"narrow; allowing for the batches: {robust.describe()}."
        )
    agree = len(checks) - len(split)
    if agree:
        notes.append(
            f"{agree} cell(s) were recorded in several batches whose failure rates agree "
            "(homogeneity test and Tarone's over-dispersion test, p ≥ 0.05), so they are pooled."
        )
    return notes


def notes_section(df: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """Notes on what the numbers leave out or pool; none: no section."""
    notes = []
    counts = df["outcome"].value_counts()
    if counts.get("build_error", 0):
        notes.append(
            f"{int(counts['build_error'])} tries ended in a build error; they are not counted "
            "as missing layers (nor as clean tries)."
        )
    if counts.get("infra_error", 0):
        notes.append(
            f"{int(counts['infra_error'])} tries hit an infrastructure error (registry, "
            "engine, volume) and are not counted."
        )
    counted = df[df["counted"]]
    no_cache = int(counted["cache_used"].eq(False).fillna(False).sum())
    unknown = int(counted["cache_used"].isna().sum())
    if no_cache:
        notes.append(
            f"{no_cache} counted tries did not use the imported cache (no cached step); "
            "such a try cannot show the bug, so it dilutes the rate."
        )
    if unknown:
        notes.append(
            f"For {unknown} counted tries the backend could not tell whether the cache was used."
        )
    notes += _host_notes(df)
    notes += _batch_notes(df)
    if len(cells) == 1:
        notes.append("Only one cell was run, so nothing is compared.")
    if not counted.empty and counted["reset_freq"].nunique() < 2:
        notes.append("Only one reset frequency was run, so its effect cannot be estimated.")
    if not counted.empty and counted["failed"].sum() == 0:
        notes.append("No try lost a layer.")
    if not notes:
        return []
    return ["", "## Notes", "", *[f"- {n}" for n in notes]]
