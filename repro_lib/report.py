"""A Markdown report of trial results, ready to paste into a GitHub issue.

``write_report`` writes ``report.md``, the figures it references (PNG files
beside it, linked relatively) and ``trials.csv`` (the raw rows) into one
directory. It never fails on thin data: an empty store, a store holding only
build errors or a single cell each give a short report that says what is
missing.
"""

from __future__ import annotations

import shlex
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from . import plots, stats
from .comment import write_github
from .config import Paths
from .culprit import SearchRecord
from .forensics import find_run_dir
from .merge import merged_view
from .report_culprit import culprit_section
from .results import (
    ANALYSIS_COLUMNS,
    derive,
    filter_results,
    load_results,
    version_key,
    write_trials,
)
from .stats import (
    CLEAN_BOUND_ASSUMES,
    batch_heterogeneity,
    batch_rate,
    compare,
    cycle_rate,
    failure_clustering,
    failure_model,
    format_p,
    format_pct,
    hazard_trend_test,
    k_curve_fit,
    logistic_fit,
    rate_by_position,
    rates_by,
    tries_for_upper_bound,
)
from .store import Store

__all__ = ["write_report", "default_command"]

ALPHA = 0.05
MAX_RATE = 0.01  # a clean version is "no failure seen" once p < 1% (exact, one-sided)
_NOT_OPTIONS = frozenset({"command", "argv", "scenario_name"})
_TRISTATE_FLAGS = frozenset({"privileged"})
_MAX_PAIRS_VERSIONS = 6
_CYCLE_RATE_INPUTS = frozenset(
    {"run_id", "trial", "since_reset", "cycle", "reset_freq", "counted", "failed"}
)
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
    sweep: str | None = None,
    run: str | None = None,
    command: str | None = None,
    github: bool = False,
    evidence: int = 3,
    searches: Sequence[SearchRecord] = (),
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
        Restrict the report to one sweep or one run.
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
    )


def _write(
    store_or_df: str | Path | Store | pd.DataFrame | None,
    out_dir: str | Path,
    sweep: str | None,
    run: str | None,
    command: str | None,
    *,
    label: str | None = None,
    github: bool = False,
    evidence: int = 3,
    searches: Sequence[SearchRecord] = (),
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
            runs, source = _runs(store_or_df, df, sweep, run), f"`{store_or_df.path.name}`"
            batches = _batches(store_or_df, df)
            sweeps = _sweep_states(store_or_df, df, sweep)
        else:
            path = Path(store_or_df) if store_or_df is not None else None
            with Store(path if path is not None else _default_store(), read_only=True) as st:
                runs, source = _runs(st, df, sweep, run), f"`{st.path.name}`"
                batches = _batches(st, df)
                sweeps = _sweep_states(st, df, sweep)
        run_dirs = Paths.from_env().runs
    if command is None:
        command = default_command(runs)
    source = label or source

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
            df, out, sweep=sweep, run=run, command=command, runs=runs, source=source, sweeps=sweeps
        )
        trials = writing.result()
    text += "\n".join(culprit_section(searches, out))
    text = text.rstrip("\n") + "\n" + "\n".join(_what_was_lost(df, batches, run_dirs)) + "\n"
    report = out / "report.md"
    report.write_text(text, encoding="utf-8")
    if github:
        scope = (
            f"sweep `{sweep}`" if sweep else f"run `{run}`" if run else f"all trials in {source}"
        )
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


def default_command(runs: Iterable[dict[str, Any]]) -> str | None:
    """The ``repro-lib`` command line(s) that produced the given runs.

    Built from each run's ``params`` (the CLI options as a JSON dict): an
    ``argv`` list is used verbatim; otherwise ``command`` (default
    ``reproduce``) names the sub-command and every other key becomes
    ``--key-name value`` (``True`` gives a bare flag, lists repeat the option,
    ``None``, ``False`` and empty values are left out, except that
    ``privileged: False`` gives ``--no-privileged``; bookkeeping keys such as
    ``scenario_name`` are skipped). Distinct command lines are joined by
    newlines; None when there is no run.
    """
    lines: list[str] = []
    for r in runs:
        params = r.get("params") or {}
        line = _command_line(params)
        if line not in lines:
            lines.append(line)
    if not lines:
        return None
    if len(lines) > 5:
        lines = [*lines[:5], f"# … and {len(lines) - 5} more (see the runs table of the store)"]
    return "\n".join(lines)


# helpers -----------------------------------------------------------------
def _default_store() -> Path:
    return Paths.from_env().store


def _runs(st: Store, df: pd.DataFrame, sweep: str | None, run: str | None) -> list[dict[str, Any]]:
    if run is not None:
        one = st.run(run)
        return [one] if one else []
    runs = st.runs(sweep)
    seen = set(df["run_id"].unique()) if len(df) else set()
    if seen:
        runs = [r for r in runs if r["run_id"] in seen]
    return runs


#: what each recorded sweep status means, for the report's status line
SWEEP_STATUS = {
    "done": "every planned trial is recorded",
    "incomplete": "it ended with planned trials missing; `repro-lib sweep --resume` runs them",
    "refused": "its last start was refused before any cell ran (a usage or host check failed)",
    "failed": "an error stopped it; its trials are kept and `repro-lib sweep --resume` finishes it",
    "interrupted": "it was interrupted; `repro-lib sweep --resume` finishes it",
    "running": "it is running, or its client died (`repro-lib sweep --resume` finishes it)",
}


def _sweep_states(st: Store, df: pd.DataFrame, sweep: str | None) -> dict[str, str]:
    ids = [sweep] if sweep else _uniq(df["sweep_id"]) if len(df) else []
    try:
        recorded = {i: (st.sweep(i) or {}).get("status") for i in ids}
    except sqlite3.OperationalError:  # a store from before sweeps were recorded
        return {}
    return {i: status for i, status in recorded.items() if status}


def _sweep_status_lines(sweeps: dict[str, str]) -> list[str]:
    lines = [
        f"Sweep `{i}`: **{status}** ({SWEEP_STATUS.get(status, 'a status this version does not know')})."
        for i, status in sweeps.items()
    ]
    return ["", *lines] if len(lines) == 1 else ["", *(f"- {line}" for line in lines)]


def _command_line(params: dict[str, Any]) -> str:
    recorded = params.get("command")
    if isinstance(recorded, str) and recorded.startswith("repro-lib "):
        return recorded  # the exact command line the CLI recorded
    argv = params.get("argv")
    if isinstance(argv, list) and argv:
        words = [str(a) for a in argv]
        if words[0] != "repro-lib":
            words = ["repro-lib", *words]
        return shlex.join(words)
    words = ["repro-lib", str(params.get("command") or "reproduce")]
    for key, value in params.items():
        option = "--" + str(key).replace("_", "-")
        if key in _TRISTATE_FLAGS and value is False:
            words.append(f"--no-{option[2:]}")
            continue
        if key in _NOT_OPTIONS or value is None or value is False or value in ("", []):
            continue
        if value is True:
            words.append(option)
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [option, str(item)]
        elif isinstance(value, dict):
            continue
        else:
            words += [option, str(value)]
    return shlex.join(words)


def _package_version() -> str:
    try:
        return metadata.version("repro-lib")
    except metadata.PackageNotFoundError:
        return "unknown"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def frame_to_markdown(df: pd.DataFrame, *, digits: int = 3) -> str:
    """A DataFrame as a Markdown table (floats rounded), e.g. for the README."""
    rows = [
        [f"{v:.{digits}f}" if isinstance(v, float) else v for v in row]
        for row in df.itertuples(index=False)
    ]
    return _table([str(c) for c in df.columns], rows)


def _table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" * len(headers)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _uniq(series: pd.Series) -> list[str]:
    values = [str(v) for v in series.dropna().unique() if str(v) != ""]
    return sorted(values, key=version_key)


def _join(values: list[str], empty: str = "not recorded") -> str:
    return ", ".join(f"`{v}`" for v in values) if values else empty


def _when(t: Any) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC")


def _interval(low: float, high: float, tries: int) -> str:
    if tries == 0:
        return "–"
    return f"{format_pct(low)}–{format_pct(high)}"


def _render(
    df: pd.DataFrame,
    out: Path,
    *,
    sweep: str | None,
    run: str | None,
    command: str | None,
    runs: list[dict[str, Any]],
    source: str,
    sweeps: dict[str, str] | None = None,
) -> str:
    scope = f"sweep `{sweep}`" if sweep else f"run `{run}`" if run else f"all trials in {source}"
    where = f"for sweep `{sweep}`" if sweep else f"for run `{run}`" if run else f"in {source}"
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    parts = [
        "# BuildKit missing-layer reproduction",
        "",
        f"Report on {scope}, written {today} by repro-lib {_package_version()}. "
        "Each try builds the scenario with an imported cache and checks that the "
        "output holds every expected layer; build and infra errors are not counted "
        "as evidence either way.",
    ]
    if sweeps:
        parts += _sweep_status_lines(sweeps)
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
    parts += ["", "## Environment", "", _environment(df, runs)]
    parts += ["", "## How to reproduce", "", "```sh"]
    parts += [command or "# command not recorded (pass command= to write_report)", "```"]

    cells = rates_by(df, "cell", alpha=ALPHA)
    conf = f"{100 * (1 - ALPHA):g}%"
    parts += ["", "## Results per cell", ""]
    parts.append(
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
    parts += [
        "",
        "Tries count only builds that finished (`ok` or `missing_layer`). Tries that share "
        "a BuildKit state between two resets are not independent, so the reset cycle is the "
        f"unit of replication: the {conf} interval treats cycles as clusters (binomial GLM "
        "with cluster-robust covariance, never narrower than Wilson's). The design effect is "
        "its variance over the binomial one (1 when every try is its own cycle, K = 1); "
        "without a failure the upper end counts complete cycles. The Wilson interval beside "
        "it assumes independent tries and is too narrow when failures cluster.",
    ]

    if counted.empty:
        parts += _no_usable(df)
    else:
        parts += _verdicts(df)
        parts += _comparisons(df, cells)
        parts += _clustering(counted)
        parts += _positions(counted)
        parts += _figures(df, out)
    parts += _notes(df, cells)
    parts.append("")
    return "\n".join(parts)


def _environment(df: pd.DataFrame, runs: list[dict[str, Any]]) -> str:
    importers = (
        df[["version", "image"]]
        .drop_duplicates()
        .sort_values("version", key=lambda s: s.map(version_key))
    )
    buildkit = "; ".join(f"`{v}` (`{i}`)" for v, i in importers.itertuples(index=False))
    exporters = df[["cache_version", "cache_image"]].drop_duplicates()
    cache = "; ".join(
        f"`{v}` (`{i}`)"
        for v, i in exporters.sort_values(
            "cache_version", key=lambda s: s.map(version_key)
        ).itertuples(index=False)
    )
    setups = sorted(
        {
            f"{b} / {m} / {c}"
            for b, m, c in df[["backend", "mode", "cache_type"]]
            .drop_duplicates()
            .itertuples(index=False)
        }
    )
    rows = [
        ["Docker hosts", _hosts(df)],
        ["Docker Engine", _join(_uniq(df["engine_version"]))],
        ["Kernel", _join(_uniq(df["kernel"]))],
        ["BuildKit (imports the cache)", buildkit or "not recorded"],
        [
            "BuildKit (exported the cache)",
            "same as the importer"
            if (df["cache_version"] == df["version"]).all()
            else cache or "not recorded",
        ],
        ["Backend / mode / cache type", ", ".join(setups)],
        ["Scenario", _join(_uniq(df["scenario"]))],
        ["repro-lib (recording)", _join(_uniq(df["package_version"]))],
        [
            "Trials recorded",
            f"{len(df)} between {_when(df['started_at'].min())} and {_when(df['started_at'].max())}",
        ],
    ]
    run_ids = sorted(df["run_id"].dropna().unique())
    shown = ", ".join(f"`{r}`" for r in run_ids[:5]) + (" …" if len(run_ids) > 5 else "")
    rows.append(["Runs", f"{len(run_ids)}: {shown}"])
    sweeps = _uniq(df["sweep_id"])
    if sweeps:
        rows.append(["Sweeps", _join(sweeps)])
    return _table(["", ""], rows)


def _hosts(df: pd.DataFrame) -> str:
    """Each host with its CPU count and how many trials it ran (a cluster sweep has several)."""
    if "host" not in df.columns:
        return "not recorded"
    known = df[df["host"].fillna("").astype(str) != ""]
    if known.empty:
        return "not recorded"
    parts = []
    for host, group in known.groupby("host", sort=True):
        cpus = group["cpus"].dropna() if "cpus" in group else pd.Series(dtype=float)
        where = f"{host} ({int(cpus.iloc[0])} CPUs)" if len(cpus) else str(host)
        parts.append(f"{where}: {len(group)} trials")
    return "; ".join(parts)


def _no_usable(df: pd.DataFrame) -> list[str]:
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


def _design_effect(value: float) -> str:
    return f"{value:.2g}" if pd.notna(value) else "–"


def _verdicts(df: pd.DataFrame) -> list[str]:
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


def _comparisons(df: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
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


def _clustering(counted: pd.DataFrame) -> list[str]:
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


def _positions(counted: pd.DataFrame) -> list[str]:
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


def _batches(st: Store, df: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for run_id in sorted(df["run_id"].dropna().unique()) if len(df) else []:
        facts = st.batch(run_id)
        if facts is not None:
            out[run_id] = facts
    return out


def _what_was_lost(df: pd.DataFrame, batches: dict[str, Any], runs_dir: Path | None) -> list[str]:
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


def _notes(df: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
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
