"""The report's setting: what was run, where, its sweeps' states, and how to run it again.

The Environment table, the sweep status lines and the command line of the
"How to reproduce" section, from the trials and the store's ``runs`` and
``sweeps`` tables.
"""

from __future__ import annotations

import shlex
import sqlite3
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

import pandas as pd

from .report_format import _join, _table, _uniq, _when
from .results import version_key
from .store import Store

_NOT_OPTIONS = frozenset({"command", "argv", "scenario_name"})
_TRISTATE_FLAGS = frozenset({"privileged"})


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


def runs_in_scope(
    st: Store, df: pd.DataFrame, sweep: str | Sequence[str] | None, run: str | None
) -> list[dict[str, Any]]:
    """The stored runs the report covers: the one run, or the sweeps' (or all) runs with trials."""
    if run is not None:
        one = st.run(run)
        return [one] if one else []
    if sweep is None or isinstance(sweep, str):
        runs = st.runs(sweep)
    else:
        runs = [r for one in sweep for r in st.runs(one)]
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


def sweep_states(st: Store, df: pd.DataFrame, sweep: str | Sequence[str] | None) -> dict[str, str]:
    """Each sweep's recorded status (``SWEEP_STATUS``); empty for a store without sweeps."""
    if isinstance(sweep, str):
        ids = [sweep]
    elif sweep:
        ids = list(sweep)
    else:
        ids = _uniq(df["sweep_id"]) if len(df) else []
    try:
        recorded = {i: (st.sweep(i) or {}).get("status") for i in ids}
    except sqlite3.OperationalError:  # a store from before sweeps were recorded
        return {}
    return {i: status for i, status in recorded.items() if status}


def sweep_status_lines(sweeps: dict[str, str]) -> list[str]:
    """One line per sweep saying its status and what it means."""
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


def package_version() -> str:
    """The installed repro-lib's version, the one writing the report."""
    try:
        return metadata.version("repro-lib")
    except metadata.PackageNotFoundError:
        return "unknown"


def environment_table(df: pd.DataFrame, runs: list[dict[str, Any]]) -> str:
    """The Environment table: hosts, engines, BuildKit versions, setups, when, which runs."""
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
