"""The report's "What was lost": lost Dockerfile steps, the exported cache, an evidence bundle."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from .forensics import find_run_dir
from .report_format import _cell, _join, _table, _uniq
from .store import Store


def batch_facts(st: Store, df: pd.DataFrame) -> dict[str, Any]:
    """Each run's stored batch facts (``forensics.CacheFacts``), for the exported cache."""
    out = {}
    for run_id in sorted(df["run_id"].dropna().unique()) if len(df) else []:
        facts = st.batch(run_id)
        if facts is not None:
            out[run_id] = facts
    return out


def what_was_lost_section(
    df: pd.DataFrame, batches: dict[str, Any], runs_dir: Path | None
) -> list[str]:
    """Lost steps across failures, the exported cache's layers, and one evidence bundle."""
    failed = df[df["failed"]] if len(df) else df
    if failed.empty:
        return []
    lines = ["", "## What was lost", ""]
    steps = Counter(step for lost in failed["lost_steps"] for step in (lost or []))
    unnamed = int(sum(not (lost or []) for lost in failed["lost_steps"]))
    if steps:
        lines.append(
            _table(
                ["Lost Dockerfile step", "Failures"],
                [[f"`{_cell(step)}`", n] for step, n in steps.most_common()],
                "lr",
            )
        )
        references = _uniq(failed["lost_reference"])
        lines += ["", f"Judged against: {_join([r.split(':')[0] for r in references])}."]
    if unnamed:
        lines += ["", f"{unnamed} failures were recorded before lost steps were (no step named)."]
    facts = next((batches[r] for r in failed["run_id"].unique() if r in batches), None)
    if facts is not None:
        lines += ["", f"### The exported cache of run `{facts.run_id}`", "", *facts.describe()]
    example = failed[failed["evidence_path"].fillna("").astype(str) != ""].head(1)
    if len(example) and runs_dir is not None:
        row = example.iloc[0]
        run_dir = find_run_dir(runs_dir, row["run_id"])
        bundle = run_dir / row["evidence_path"] if run_dir else None
        lines += ["", f"### Evidence of run `{row['run_id']}`, trial {row['trial']}", ""]
        if bundle is not None and bundle.is_dir():
            lines.append("Files: " + ", ".join(f"`{p.name}`" for p in sorted(bundle.iterdir())))
            lines.append(f"(`repro-lib evidence {row['run_id']} {row['trial']}` prints it.)")
        else:
            lines.append("The bundle is not on this machine (the store travelled without it).")
    return lines
