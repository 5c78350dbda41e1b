"""Trial results as an analysis-ready pandas DataFrame.

``load_results`` reads the ``trials`` table of a results store, applies the
usual filters and adds the derived columns every analysis needs (``failed``,
``counted``, ``cache_used``, ``cell``, ``version_label``), so that ``stats``,
``plots`` and ``report`` all start from the same table.

Derived columns
---------------
failed : bool
    ``outcome == "missing_layer"``.
counted : bool
    ``outcome`` is ``ok`` or ``missing_layer``. Build and infra errors are not
    evidence about the bug and are left out of every rate.
cache_used : boolean (nullable)
    ``cache_hits > 0``; ``<NA>`` when the backend could not tell.
version_label : str
    The importer's version, or ``"<version><-<cache_version>"`` when the
    imported cache was exported by another version (e.g. ``v0.7.0<-v0.9.0``).
configuration : str
    ``cell`` without a ``/rep=N`` replicate suffix: replicate batches of one
    configuration share it (and are tested for agreement under it).
cell : str
    The stored cell, or when none was stored a key
    ``backend=…/version=…/cache=…/reset=K/mode=…`` where ``version`` is the
    ``version_label`` above and ``cache`` the cache type.

``default_store`` names the store an analysis reads when none is given: the
project's own store once it exists, else the small sample store shipped with
the project (``load_results(None)`` itself always means the project's store).
``findings_store`` does the same for the findings dataset
(``data/raw/findings/trials.sqlite``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Paths
from .errors import UsageError
from .records import TRIAL_COLUMNS, Outcome
from .store import Store

DERIVED_COLUMNS: tuple[str, ...] = ("failed", "counted", "cache_used", "version_label")
"""Columns ``load_results`` adds to the stored ones (``cell`` is filled, not added)."""

RESULT_COLUMNS: tuple[str, ...] = TRIAL_COLUMNS + DERIVED_COLUMNS
"""Every column of a ``load_results`` DataFrame, in order."""

COUNTED_OUTCOMES = frozenset({Outcome.OK.value, Outcome.MISSING_LAYER.value})

_INT_COLUMNS = (
    "trial",
    "reset_freq",
    "since_reset",
    "reset_index",
    "lane",
    "layers",
    "cache_hits",
    "cache_steps",
    "cache_pulled",
    "cpus",
    "attempt",
)
_REPLICATE = re.compile(r"/rep=\d+$")
_LIST_COLUMNS = ("missing", "layer_digests", "lost_steps", "lost_digests")
#: columns of the ``batches`` table joined to every trial of its run
BATCH_COLUMNS = {
    "status": "cache_facts",
    "manifest_digest": "cache_manifest_digest",
    "layer_count": "cache_layer_count",
    "empty_layers": "cache_empty_layers",
}


def default_store(paths: Paths | None = None) -> Path:
    """The store to analyse by default: the project store if it exists, else the sample store.

    Parameters
    ----------
    paths : Paths, optional
        The project's paths; ``Paths.from_env()`` when omitted.

    Returns
    -------
    Path
        ``paths.store`` when that file exists, otherwise ``paths.sample_store``
        (which may not exist either; ``load_results`` then says so).
    """
    paths = paths or Paths.from_env()
    return paths.store if paths.store.is_file() else paths.sample_store


def findings_store(paths: Paths | None = None) -> Path:
    """The store the findings notebook reads by default: the findings dataset if it exists,
    else the sample store.

    Parameters
    ----------
    paths : Paths, optional
        The project's paths; ``Paths.from_env()`` when omitted.

    Returns
    -------
    Path
        ``paths.findings_store`` (``data/raw/findings/trials.sqlite``) when that
        file exists, otherwise ``paths.sample_store``.
    """
    paths = paths or Paths.from_env()
    return paths.findings_store if paths.findings_store.is_file() else paths.sample_store


def load_results(
    store: str | Path | Store | Sequence[str | Path] | None = None,
    *,
    sweep: str | Iterable[str] | None = None,
    run: str | Iterable[str] | None = None,
    version: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
    include_no_cache: bool = True,
) -> pd.DataFrame:
    """Read trials from a results store, filtered, with derived columns.

    Parameters
    ----------
    store : str, Path, Store, list of paths, or None
        A store file, an open ``Store``, or None for the project's default
        store (``Paths.from_env().store``; it does not fall back to the sample
        store, see ``default_store``). A ``Store`` passed in is left open.
        A list of store files (e.g. the shards of a CI matrix) is merged in
        memory by ``repro_lib.merge`` with the same checks as ``repro-lib
        merge``, so a trial is never counted twice.
    sweep, run, version, backend : str or list of str, optional
        Keep only rows whose ``sweep_id`` / ``run_id`` / ``version`` /
        ``backend`` is one of the given values.
    include_no_cache : bool, default True
        When False, drop tries known not to have used the imported cache
        (``cache_used`` is False); tries whose cache use is unknown are kept.

    Returns
    -------
    pandas.DataFrame
        One row per trial with the columns in ``RESULT_COLUMNS``; empty (with
        every column) when the store holds no matching trial.

    Raises
    ------
    UsageError
        The store file does not exist or cannot be read, or (for a list) two
        stores disagree about one trial.
    """
    if isinstance(store, (list, tuple)):
        from .merge import merged_view

        with merged_view(store) as merged:
            return load_results(
                merged,
                sweep=sweep,
                run=run,
                version=version,
                backend=backend,
                include_no_cache=include_no_cache,
            )
    if isinstance(store, Store):
        raw = _with_batches(store.dataframe(), store.batches_frame())
    else:
        path = Path(store) if store is not None else Paths.from_env().store
        if not path.is_file():
            raise UsageError(
                f"no results store at {path}",
                hint="record some trials first (repro-lib reproduce …) or pass the path of an existing store",
            )
        with Store(path, read_only=True) as opened:
            raw = _with_batches(opened.dataframe(), opened.batches_frame())
    df = derive(raw)
    df = filter_results(df, sweep=sweep, run=run, version=version, backend=backend)
    if not include_no_cache:
        df = df[df["cache_used"].ne(False).fillna(True).astype(bool)]
    return df.reset_index(drop=True)


def _with_batches(trials: pd.DataFrame, batches: pd.DataFrame) -> pd.DataFrame:
    """Join each run's exported-cache facts, so analysis can ask whether batches whose
    cache differs fail at different rates (``cache_manifest_digest``, ``cache_empty_layers``)."""
    facts = batches[["run_id", *BATCH_COLUMNS]].rename(columns=BATCH_COLUMNS)
    return trials.merge(facts, on="run_id", how="left")


def filter_results(
    df: pd.DataFrame,
    *,
    sweep: str | Iterable[str] | None = None,
    run: str | Iterable[str] | None = None,
    version: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Keep the rows matching every given filter (see ``load_results``)."""
    for column, wanted in (
        ("sweep_id", sweep),
        ("run_id", run),
        ("version", version),
        ("backend", backend),
    ):
        if wanted is None:
            continue
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        df = df[df[column].isin(values)]
    return df


def derive(raw: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns to a raw ``trials`` frame (idempotent).

    Parses ``started_at`` to timezone-aware datetimes, decodes the JSON list
    columns ``missing`` and ``layer_digests``, and makes the integer columns
    nullable integers.
    """
    df = raw.copy()
    for column in TRIAL_COLUMNS:
        if column not in df.columns:
            df[column] = pd.Series([None] * len(df), index=df.index, dtype=object)
    for column in _INT_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype(float)
    df["privileged"] = pd.to_numeric(df["privileged"], errors="coerce").astype("boolean")
    df["started_at"] = pd.to_datetime(df["started_at"], utc=True, format="ISO8601")
    for column in _LIST_COLUMNS:
        df[column] = pd.Series([_as_list(v) for v in df[column]], index=df.index, dtype=object)
    outcome = df["outcome"].astype(object)
    df["failed"] = (outcome == Outcome.MISSING_LAYER.value).astype(bool)
    df["counted"] = outcome.isin(COUNTED_OUTCOMES).astype(bool)
    hits = df["cache_hits"]
    df["cache_used"] = (hits > 0).astype("boolean").mask(hits.isna())
    df["version_label"] = pd.Series(
        [_version_label(v, c) for v, c in zip(df["version"], df["cache_version"], strict=True)],
        index=df.index,
        dtype=object,
    )
    df["cell"] = pd.Series(
        [
            cell if _present(cell) else _cell_key(row)
            for cell, row in zip(df["cell"], df.to_dict("records"), strict=True)
        ],
        index=df.index,
        dtype=object,
    )
    # replicate batches of one configuration (``/rep=N`` cells) are pooled, and tested
    # for agreement, under the configuration
    df["configuration"] = pd.Series(
        [_REPLICATE.sub("", str(c)) for c in df["cell"]], index=df.index, dtype=object
    )
    return df[list(RESULT_COLUMNS) + [c for c in df.columns if c not in RESULT_COLUMNS]]


def raw_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The stored columns only, list columns re-encoded as JSON (as in the store)."""
    out = df[[c for c in TRIAL_COLUMNS if c in df.columns]].copy()
    for column in _LIST_COLUMNS:
        if column in out.columns:
            out[column] = [json.dumps(_as_list(v)) for v in out[column]]
    if "started_at" in out.columns and pd.api.types.is_datetime64_any_dtype(out["started_at"]):
        out["started_at"] = out["started_at"].map(lambda t: t.isoformat() if pd.notna(t) else "")
    return out


def version_key(value: Any) -> tuple[tuple[int, Any], ...]:
    """Sort key putting ``v0.9.0`` before ``v0.10.0`` (numbers compare as numbers)."""
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def _present(value: Any) -> bool:
    """True for a real scalar value (not None/NaN/NA and not an empty string)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return False
    return not (isinstance(value, str) and value == "")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if not _present(value):
        return []
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return decoded if isinstance(decoded, list) else [decoded]
    return [value]


def _version_label(version: Any, cache_version: Any) -> str:
    version = str(version) if _present(version) else "?"
    if _present(cache_version) and str(cache_version) != version:
        return f"{version}<-{cache_version}"
    return version


def _cell_key(row: dict[str, Any]) -> str:
    def text(key: str) -> str:
        value = row.get(key)
        return str(value) if _present(value) else "?"

    return (
        f"backend={text('backend')}/version={_version_label(row.get('version'), row.get('cache_version'))}"
        f"/cache={text('cache_type')}/reset={text('reset_freq')}/mode={text('mode')}"
    )
