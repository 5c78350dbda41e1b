"""A Markdown report of trial results, ready to paste into a GitHub issue.

``write_report`` writes ``report.md``, the figures it references (PNG files
beside it, linked relatively) and ``trials.csv`` (the raw rows) into one
directory. It never fails on thin data: an empty store, a store holding only
build errors or a single cell each give a short report that says what is
missing.

This module reads the data, puts the sections in their order and draws the
figures; each section is written by a module of its concern:
``report_context`` (environment, sweep states, how to reproduce),
``report_verdicts`` (cells, verdicts, comparisons), ``report_position``
(clustering within a cycle, rate by position), ``report_notes``,
``report_culprit`` and ``report_lost`` (what was lost), with the Markdown
helpers in ``report_format``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from . import plots
from .comment import write_github
from .config import Paths
from .culprit import SearchRecord
from .merge import merged_view
from .report_context import (
    default_command,
    environment_table,
    package_version,
    runs_in_scope,
    sweep_states,
    sweep_status_lines,
)
from .report_culprit import culprit_section
from .report_format import ALPHA, frame_to_markdown
from .report_lost import batch_facts, what_was_lost_section
from .report_notes import notes_section
from .report_position import clustering_section, positions_section
from .report_verdicts import (
    cells_section,
    comparisons_section,
    no_usable_section,
    verdicts_section,
)
from .results import ANALYSIS_COLUMNS, derive, filter_results, load_results, write_trials
from .stats import rates_by
from .store import Store

__all__ = ["write_report", "default_command", "frame_to_markdown", "write_trials"]

_FIGURES = (
    ("rate_vs_reset.png", "Missing-layer probability vs reset frequency", plots.plot_rate_vs_reset),
    ("heatmap.png", "Rate by version and reset frequency", plots.plot_heatmap),
    (
        "rate_by_position.png",
        "Failure probability by position since reset",
        plots.plot_rate_by_position,
    ),
    (
        "cumulative_detection.png",
        "Chance of seeing the bug at least once",
        plots.plot_cumulative_detection,
    ),
)


def write_report(
    store_or_df: str | Path | Store | pd.DataFrame | Sequence[str | Path] | None,
    out_dir: str | Path,
    *,
    sweep: str | Sequence[str] | None = None,
    run: str | None = None,
    command: str | None = None,
    github: bool = False,
    evidence: int = 3,
    searches: Sequence[SearchRecord] = (),
    scope: str | None = None,
) -> Path:
    """Write ``report.md``, its PNG figures and ``trials.csv`` into ``out_dir``.

    Parameters
    ----------
    store_or_df : path, Store, DataFrame, list of paths or None
        Where the trials come from; None means the project's default store. A
        list of stores is merged first (``repro_lib.merge``, same checks as
        ``repro-lib merge``).
        With a DataFrame the ``runs`` table is unknown, so the reproducing
        command is only shown when ``command`` is given.
    out_dir : path
        Created if needed; existing files of the same names are replaced.
    sweep, run : str, optional
        Restrict the report to one sweep (or several: a list of sweep ids, e.g. a
        culprit search's probes) or one run.
    command : str, optional
        The command that reproduces the data; by default derived from the
        stored runs' parameters (see ``default_command``).
    github : bool, default False
        Also write ``comment.md`` (one GitHub issue comment, at most 65,536
        characters) and ``findings.zip`` beside the report; see ``repro_lib.comment``.
    evidence : int, default 3
        With ``github``: the most failure evidence bundles put in ``findings.zip``.
    searches : sequence of SearchRecord, optional
        Culprit searches (``Store.searches``) to show in a "Culprit" section, with
        a posterior plot each (``repro_lib.report_culprit``); none: no section.
    scope : str, optional
        How the report names what it covers (default: "sweep `ID`", "run `ID`"
        or all trials in the store).

    Returns
    -------
    Path
        The ``report.md`` written.

    Raises
    ------
    UsageError
        The store file does not exist.
    """
    if isinstance(store_or_df, (list, tuple)):
        label = ", ".join(f"`{Path(p).name}`" for p in store_or_df)
        with merged_view(store_or_df) as merged:
            return _write(
                merged,
                out_dir,
                sweep,
                run,
                command,
                label=f"the merged stores {label}",
                github=github,
                evidence=evidence,
                searches=searches,
                scope=scope,
            )
    return _write(
        store_or_df,
        out_dir,
        sweep,
        run,
        command,
        github=github,
        evidence=evidence,
        searches=searches,
        scope=scope,
    )


def _write(
    store_or_df: str | Path | Store | pd.DataFrame | None,
    out_dir: str | Path,
    sweep: str | Sequence[str] | None,
    run: str | None,
    command: str | None,
    *,
    label: str | None = None,
    github: bool = False,
    evidence: int = 3,
    searches: Sequence[SearchRecord] = (),
    scope: str | None = None,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    sweeps: dict[str, str] = {}
    batches: dict[str, Any] = {}
    run_dirs: Path | None = None
    source = "a DataFrame"
    if isinstance(store_or_df, pd.DataFrame):
        df = store_or_df
        if not {"counted", "failed", "version_label"} <= set(df.columns):
            df = derive(df)
        df = filter_results(df, sweep=sweep, run=run).reset_index(drop=True)
    else:
        df = load_results(store_or_df, sweep=sweep, run=run, columns=ANALYSIS_COLUMNS)
        if isinstance(store_or_df, Store):
            runs, source = runs_in_scope(store_or_df, df, sweep, run), f"`{store_or_df.path.name}`"
            batches = batch_facts(store_or_df, df)
            sweeps = sweep_states(store_or_df, df, sweep)
        else:
            path = Path(store_or_df) if store_or_df is not None else None
            with Store(path if path is not None else _default_store(), read_only=True) as st:
                runs, source = runs_in_scope(st, df, sweep, run), f"`{st.path.name}`"
                batches = batch_facts(st, df)
                sweeps = sweep_states(st, df, sweep)
        run_dirs = Paths.from_env().runs
    if command is None:
        command = default_command(runs)
    source = label or source
    if scope is None:
        scope = _scope(sweep, run, source)

    # the trials file is written while the report is drawn: reading the store and writing
    # Parquet run in Arrow and SQLite, outside the GIL, so on two cores they take no time of
    # their own (a few seconds at a million trials)
    with ThreadPoolExecutor(max_workers=1) as pool:
        writing = pool.submit(
            write_trials,
            df if isinstance(store_or_df, pd.DataFrame) else store_or_df,
            out,
            sweep=sweep,
            run=run,
        )
        text = _render(
            df, out, scope=scope, covers_all=not (sweep or run), command=command, runs=runs,
            source=source, sweeps=sweeps,
        )  # fmt: skip
        trials = writing.result()
    text += "\n".join(culprit_section(searches, out))
    text = text.rstrip("\n") + "\n" + "\n".join(what_was_lost_section(df, batches, run_dirs)) + "\n"
    report = out / "report.md"
    report.write_text(text, encoding="utf-8")
    if github:
        write_github(
            out,
            df,
            scope=scope,
            trials_file=trials,
            runs_dir=run_dirs,
            evidence=evidence,
            searches=searches,
        )
    return report


# helpers -----------------------------------------------------------------
def _default_store() -> Path:
    return Paths.from_env().store


def _scope(sweep: str | Sequence[str] | None, run: str | None, source: str) -> str:
    if isinstance(sweep, str):
        return f"sweep `{sweep}`"
    if sweep:
        return "sweeps " + ", ".join(f"`{s}`" for s in sweep)
    return f"run `{run}`" if run else f"all trials in {source}"


def _render(
    df: pd.DataFrame,
    out: Path,
    *,
    scope: str,
    covers_all: bool,
    command: str | None,
    runs: list[dict[str, Any]],
    source: str,
    sweeps: dict[str, str] | None = None,
) -> str:
    where = f"in {source}" if covers_all else f"for {scope}"
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    parts = [
        "# BuildKit missing-layer reproduction",
        "",
        f"Report on {scope}, written {today} by repro-lib {package_version()}. "
        "Each try builds the scenario with an imported cache and checks that the "
        "output holds every expected layer; build and infra errors are not counted "
        "as evidence either way.",
    ]
    if sweeps:
        parts += sweep_status_lines(sweeps)
    if df.empty:
        parts += [
            "",
            "## No trials",
            "",
            f"There are no recorded trials {where}, so there is nothing to estimate "
            "and no figures were drawn.",
            "",
            "Record some, then write this report again, e.g.:",
            "",
            "```sh",
            command or "repro-lib reproduce --tries 20   # one batch of tries into the store",
            "```",
            "",
        ]
        return "\n".join(parts)

    counted = df[df["counted"]]
    parts += ["", "## Environment", "", environment_table(df, runs)]
    parts += ["", "## How to reproduce", "", "```sh"]
    parts += [command or "# command not recorded (pass command= to write_report)", "```"]

    cells = rates_by(df, "cell", alpha=ALPHA)
    parts += cells_section(cells)

    if counted.empty:
        parts += no_usable_section(df)
    else:
        parts += verdicts_section(df)
        parts += comparisons_section(df, cells)
        parts += clustering_section(counted)
        parts += positions_section(counted)
        parts += _figures(df, out)
    parts += notes_section(df, cells)
    parts.append("")
    return "\n".join(parts)


def _figures(df: pd.DataFrame, out: Path) -> list[str]:
    lines = ["", "## Figures", ""]
    figures = list(_FIGURES)
    figures.append(("durations.png", "Duration of one try", plots.plot_durations))
    for name, caption, draw in figures:
        fig = draw(df)
        fig.savefig(out / name, dpi=110)
        lines += [f"![{caption}]({name})", ""]
    lines.append(
        "Figures are PNG files beside this report; attach them to the issue comment "
        "(drag and drop) to replace the relative links."
    )
    return lines
