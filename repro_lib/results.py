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
cycle : Int64
    The reset cycle's key, unique within a run: the trial number of the cycle's
    first try, so ``(run_id, cycle)`` names one cycle. Stored by the trial loop;
    for stores from before it, derived as ``trial - since_reset + 1`` (a try
    whose reset failed is a cycle of its own: ``trial``).

How a store is read
-------------------
A store of a million trials must load in seconds, so nothing here touches one
row at a time in Python. The filters (``sweep``, ``run``, ``version``,
``backend``, ``include_no_cache``) are SQL, so memory follows the selection.
The rows come out of SQLite as Arrow columns (the ADBC SQLite driver), in
``started_at, run_id, trial`` order (SQLite sorts the keys, not whole rows). A
typed first row fixes each column's type for the driver, so a column whose
first rows are NULL reads as its type; a store holding a stray value of another
type is read again with every value cast in SQL. String columns are pandas ``str``: Arrow-backed for those analyses group
and filter by, and for descriptive ones with few distinct values (``image``,
``detail``, ``security``, …) one Python string per distinct value shared by its
rows, a tenth of the memory; integer columns nullable ``Int64``; the four list columns (``missing``, ``layer_digests``,
``lost_steps``, ``lost_digests``) Arrow lists of strings, whose values read
back as Python lists. Derived columns are computed once per distinct value
(a store has a few dozen cells and versions, not a million) and spread back.

``default_store`` names the store an analysis reads when none is given: the
project's own store once it exists, else the small sample store shipped with
the project (``load_results(None)`` itself always means the project's store).
``findings_store`` does the same for the findings dataset
(``data/raw/findings/trials.sqlite``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .config import Paths
from .errors import UsageError
from .frames import (
    BOOL_COLUMNS,
    DERIVED_COLUMNS,
    INT_COLUMNS,
    REAL_COLUMNS,
    TO_PANDAS,
    derive_in_place,
)
from .frames import RESULT_COLUMNS as RESULT_COLUMNS  # re-exported: load_results' columns
from .frames import derive as derive  # re-exported with the loader, as before
from .frames import raw_rows as raw_rows
from .frames import version_key as version_key
from .merge import merged_view
from .records import TRIAL_COLUMNS
from .store import BUSY_TIMEOUT_S, Store

#: columns of the ``batches`` table joined to every trial of its run
BATCH_COLUMNS = {
    "status": "cache_facts",
    "manifest_digest": "cache_manifest_digest",
    "layer_count": "cache_layer_count",
    "empty_layers": "cache_empty_layers",
}
_BATCH_INT_COLUMNS = ("layer_count", "empty_layers")
#: stored columns the derived ones are computed from (always read)
DERIVE_INPUTS = (
    "run_id",
    "trial",
    "started_at",
    "outcome",
    "cache_hits",
    "version",
    "cache_version",
    "cell",
    "backend",
    "cache_type",
    "reset_freq",
    "mode",
)
#: stored columns no analysis reads (per-try JSON blobs, paths, bookkeeping): a report
#: leaves them out of memory (they are half of it) and writes them only to the trials file;
#: every column is narrower work for each group an analysis slices
UNANALYSED_COLUMNS = (
    "phases",
    "security",
    "log_path",
    "layer_digests",
    "lost_digests",
    "missing",
    "buildkit_version",
    "buildctl_via",
    "privileged",
    "cache_pulled",
    "cache_steps",
    "layers",
    "attempt",
)
ANALYSIS_COLUMNS: tuple[str, ...] = tuple(c for c in TRIAL_COLUMNS if c not in UNANALYSED_COLUMNS)
_ORDER = ("started_at", "run_id", "trial")  # the order trials are returned in
_BATCH_ROWS = 8192  # rows per Arrow batch the driver returns
_SHARED_STR = pd.StringDtype("python", na_value=np.nan)  # ``str`` too, held as Python strings
#: descriptive text columns with few distinct values that no analysis groups or filters a
#: million rows by: held as shared Python strings (see ``_Fetched``); the columns
#: analyses group by stay Arrow strings, whose comparisons and factorising are several
#: times faster
_SHARED_TEXT = frozenset(
    {
        "image",
        "cache_image",
        "scenario",
        "engine_version",
        "kernel",
        "package_version",
        "detail",
        "log_path",
        "buildkit_version",
        "security",
        "lost_reference",
        "evidence_path",
        "buildctl_via",
        "cache_facts",
        "cache_manifest_digest",
    }
)


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
    columns: Iterable[str] | None = None,
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
        ``backend`` is one of the given values (selected in SQL: only the
        selected rows are read).
    include_no_cache : bool, default True
        When False, drop tries known not to have used the imported cache
        (``cache_used`` is False); tries whose cache use is unknown are kept.
    columns : iterable of str, optional
        Read only these stored (or batch) columns, plus those the derived
        columns need (``DERIVE_INPUTS``); the others are absent from the
        result. By default every column is read. An analysis that never looks
        at, say, ``phases`` or ``security`` saves a third of the memory.

    Returns
    -------
    pandas.DataFrame
        One row per trial, ordered by ``started_at``, ``run_id``, ``trial``,
        with the columns in ``RESULT_COLUMNS`` (those read, with ``columns``)
        followed by the batch facts and ``configuration``; empty (with every
        column) when the store holds no matching trial.

    Raises
    ------
    UsageError
        The store file does not exist or cannot be read, a column asked for
        is unknown, or (for a list) two stores disagree about one trial.
    """
    if isinstance(store, (list, tuple)):
        with merged_view(store) as merged:
            return load_results(
                merged,
                sweep=sweep,
                run=run,
                version=version,
                backend=backend,
                include_no_cache=include_no_cache,
                columns=columns,
            )
    path = _store_path(store)
    selection = Selection(sweep=sweep, run=run, version=version, backend=backend)
    with _TrialsQuery.open(path) as query:
        wanted = query.resolve_columns(columns)
        raw = query.frame(wanted, selection, include_no_cache=include_no_cache)
    return derive_in_place(raw, complete=columns is None).reset_index(drop=True)


@dataclass(frozen=True)
class Selection:
    """Which trials to read: each given filter keeps the rows whose column is one of its values."""

    sweep: str | Iterable[str] | None = None
    run: str | Iterable[str] | None = None
    version: str | Iterable[str] | None = None
    backend: str | Iterable[str] | None = None

    def items(self) -> Iterator[tuple[str, list[str]]]:
        for column, wanted in (
            ("sweep_id", self.sweep),
            ("run_id", self.run),
            ("version", self.version),
            ("backend", self.backend),
        ):
            if wanted is not None:
                yield column, [wanted] if isinstance(wanted, str) else list(wanted)


def _store_path(store: str | Path | Store | None) -> Path:
    if isinstance(store, Store):
        return store.path
    path = Path(store) if store is not None else Paths.from_env().store
    if not path.is_file():
        raise UsageError(
            f"no results store at {path}",
            hint="record some trials first (repro-lib reproduce …) or pass the path of an existing store",
        )
    return path


class _TrialsQuery:
    """SQL over one store's ``trials`` (joined to ``batches``), read as Arrow.

    Every column is cast to one type in SQL and a typed first row is put before
    the data, because the ADBC SQLite driver takes each column's type from the
    first rows it sees and refuses a value of another type later.
    """

    def __init__(self, path: Path, connection: Any) -> None:
        self.path = path
        self._db = connection
        self.stored = self._declared("trials")
        if not self.stored:
            raise UsageError(
                f"{path} is not a results store (it has no trials table)",
                hint="pass a store written by repro-lib",
            )
        self.batches = self._declared("batches")

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path) -> Iterator[_TrialsQuery]:
        import adbc_driver_sqlite.dbapi

        # a store nobody writes has no -wal file: read it immutable (nothing is
        # written beside it); a live one is read as it is
        mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
        try:
            db = adbc_driver_sqlite.dbapi.connect(f"{path.resolve().as_uri()}?{mode}")
            # wait, as the store's own connections do, while a writer creates or
            # upgrades the store (the driver's default is not to wait at all)
            with contextlib.closing(db.cursor()) as cur:
                cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        except Exception as exc:  # the driver raises its own DB-API errors
            raise UsageError(
                f"cannot open results store {path}: {exc}", hint="pass --store"
            ) from None
        try:
            yield cls(path, db)
        finally:
            db.close()

    def _declared(self, table: str) -> dict[str, str]:
        """Column -> declared type of ``table`` (empty when there is no such table)."""
        try:
            with contextlib.closing(self._db.cursor()) as cur:
                cur.execute(f"PRAGMA table_info({table})")
                return {row[1]: str(row[2] or "").upper() for row in cur.fetchall()}
        except Exception as exc:
            raise UsageError(
                f"cannot read results store {self.path}: {exc}",
                hint="point --store at a valid file or move the corrupt one away",
            ) from None

    def resolve_columns(self, columns: Iterable[str] | None) -> list[str]:
        """The trial and batch-fact columns to read, in result order."""
        extras = [c for c in self.stored if c not in TRIAL_COLUMNS]
        every = [*TRIAL_COLUMNS, *extras, *BATCH_COLUMNS.values()]
        if columns is None:
            return every
        asked = set(columns)
        unknown = sorted(asked - set(every) - set(DERIVED_COLUMNS) - {"configuration"})
        if unknown:
            raise UsageError(
                f"unknown column(s) {', '.join(unknown)} in {self.path}",
                hint="ask for stored trial columns (repro_lib.records.TRIAL_COLUMNS)",
            )
        return [c for c in every if c in asked or c in DERIVE_INPUTS]

    def _kind(self, column: str) -> str:
        """``integer``, ``real`` or ``text``: the type a column is read as."""
        if column in INT_COLUMNS or column in BOOL_COLUMNS:
            return "integer"
        if column in REAL_COLUMNS:
            return "real"
        if column in BATCH_COLUMNS.values():
            source = next(k for k, v in BATCH_COLUMNS.items() if v == column)
            return "integer" if source in _BATCH_INT_COLUMNS else "text"
        declared = self.stored.get(column, "")  # a newer column goes by its declared type
        return (
            "integer"
            if "INT" in declared
            else "real"
            if declared in ("REAL", "FLOAT", "DOUBLE")
            else "text"
        )

    def _source(self, column: str) -> str:
        """The SQL giving ``column`` (NULL when this store lacks it)."""
        if column in BATCH_COLUMNS.values():
            source = next(k for k, v in BATCH_COLUMNS.items() if v == column)
            return f"b.{source}" if source in self.batches and "run_id" in self.batches else "NULL"
        return f"t.{column}" if column in self.stored else "NULL"

    def _typed(self, column: str) -> str:
        source, kind = self._source(column), self._kind(column)
        if source == "NULL":
            return "NULL"
        if kind == "integer":  # text that is no number reads as missing, as pd.to_numeric did
            return (
                f"CASE typeof({source}) WHEN 'integer' THEN {source} "
                f"WHEN 'real' THEN CAST({source} AS INTEGER) END"
            )
        if kind == "real":
            return (
                f"CASE WHEN typeof({source}) IN ('integer', 'real') THEN CAST({source} AS REAL) END"
            )
        return f"CAST({source} AS TEXT)"

    def sql(
        self,
        columns: Sequence[str],
        selection: Selection,
        *,
        include_no_cache: bool = True,
        typed: bool = False,
        sort: str = "keys",
    ) -> tuple[str, list[Any]]:
        """The query for ``columns`` of the selected trials in trial order, after a typed
        first row (``_first = 0``) that fixes each column's type for the driver.

        With ``typed`` every value is cast to its column's type in SQL: slower, but a
        stray value of another type (which the driver refuses) reads as missing or text.
        ``sort="keys"`` sorts only the keys and row ids, then fetches each row by its
        id (a fraction of the work of sorting whole rows); SQL does not promise that
        the rows come out in that order, so ``fetch`` checks it. ``sort="rows"`` has
        SQLite sort the whole rows; ``sort="none"`` leaves them in the order they are
        stored.
        """
        first = {"integer": "0", "real": "0.0", "text": "''"}
        typed_row = ", ".join(f"{first[self._kind(c)]} AS {c}" for c in columns)
        rows = ", ".join(f"{self._typed(c) if typed else self._source(c)} AS {c}" for c in columns)
        join = (
            " LEFT JOIN batches b ON b.run_id = t.run_id"
            if "run_id" in self.batches and any(c in BATCH_COLUMNS.values() for c in columns)
            else ""
        )
        clause, args = self._where(selection, include_no_cache=include_no_cache)
        keys = [c for c in _ORDER if c in self.stored]
        if sort == "keys":
            ordered = (
                f"(SELECT t.rowid AS _row FROM trials t{clause} "
                f"ORDER BY {', '.join(f't.{k}' for k in keys)} LIMIT -1) o "
                "CROSS JOIN trials t ON t.rowid = o._row"
            )
            body = f"SELECT 1, {rows} FROM {ordered}{join}"
        elif sort == "none":
            body = f"SELECT 1, {rows} FROM trials t{join}{clause}"
        else:
            order = ", ".join(["_first", *(c for c in _ORDER if c in columns)])
            body = f"SELECT 1, {rows} FROM trials t{join}{clause} ORDER BY {order}"
        return f"SELECT 0 AS _first, {typed_row} UNION ALL {body}", args

    def _where(
        self, selection: Selection, *, include_no_cache: bool = True
    ) -> tuple[str, list[Any]]:
        where, args = [], []
        for column, values in selection.items():
            where.append(f"{self._source(column)} IN ({', '.join('?' for _ in values)})")
            args += values
        if not include_no_cache and "cache_hits" in self.stored:
            where.append("NOT (typeof(t.cache_hits) IN ('integer', 'real') AND t.cache_hits <= 0)")
        return (f" WHERE {' AND '.join(where)}" if where else ""), args

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        with contextlib.closing(self._db.cursor()) as cur:
            # large batches: few chunks per column for pandas to walk
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(_BATCH_ROWS)})
            yield cur

    def _read(
        self, read: Callable[[str, list[Any]], Any], sql: Callable[[bool], tuple[str, list[Any]]]
    ) -> Any:
        """``read(*sql(typed))``: as stored first (fast), typed when the driver refuses a value."""
        try:
            return read(*sql(False))
        except OSError:  # "Type mismatch in column …": a stray value of another type
            try:
                return read(*sql(True))
            except OSError as exc:
                raise UsageError(
                    f"cannot read the trials of {self.path}: {exc}",
                    hint="check the store (sqlite3 … 'PRAGMA integrity_check')",
                ) from None

    def count(self, selection: Selection) -> int:
        """How many trials the selection holds."""
        clause, args = self._where(selection)
        with self._cursor() as cur:
            cur.execute(f"SELECT count(*) FROM trials t{clause}", args or None)
            return int(cur.fetchone()[0])

    def write_parquet(self, columns: Sequence[str], selection: Selection, target: Path) -> None:
        """Stream the selected trials into a Parquet file, batch by batch.

        The rows are in the order they are stored (mostly the order they were
        recorded): sorting a million rows would cost more than writing them, and
        nothing reads a trials file in its row order.
        """
        import pyarrow.parquet as pq

        def write(sql: str, args: list[Any]) -> None:
            with self._cursor() as cur:
                cur.execute(sql, args or None)
                reader = cur.fetch_record_batch()
                schema = reader.schema.remove(reader.schema.get_field_index("_first"))
                with pq.ParquetWriter(target, schema) as writer:
                    for batch in reader:
                        rows = batch.filter(pc.equal(batch.column("_first"), 1))
                        writer.write_batch(rows.drop_columns(["_first"]))

        self._read(write, lambda typed: self.sql(columns, selection, typed=typed, sort="none"))

    def fetch(
        self, columns: Sequence[str], selection: Selection, *, include_no_cache: bool = True
    ) -> _Fetched:
        """The selected trials, in ``started_at, run_id, trial`` order."""

        def fetch(sql: str, args: list[Any]) -> _Fetched:
            fetched = _Fetched()
            with self._cursor() as cur:
                cur.execute(sql, args or None)
                for batch in cur.fetch_record_batch():
                    fetched.add(batch)
            return fetched.done()

        def query(sort: str) -> Callable[[bool], tuple[str, list[Any]]]:
            return lambda typed: self.sql(
                columns, selection, include_no_cache=include_no_cache, typed=typed, sort=sort
            )

        fetched = self._read(fetch, query("keys"))
        if fetched.first_in_place and _in_order(fetched.arrow):
            return fetched
        del fetched  # SQLite chose another plan: have it sort the whole rows
        return self._read(fetch, query("rows"))

    def frame(
        self, columns: Sequence[str], selection: Selection, *, include_no_cache: bool = True
    ) -> pd.DataFrame:
        """The selected trials as a raw frame: stored types, no derived columns."""
        fetched = self.fetch(columns, selection, include_no_cache=include_no_cache)
        table, fetched.arrow, out = fetched.arrow, pa.table({}), {}
        for name in fetched.names:
            if name in fetched.shared:
                out[name] = pd.array(fetched.shared.pop(name), dtype=_SHARED_STR)
                continue
            column = table.column(name)
            if name in BATCH_COLUMNS.values() and self._kind(name) == "integer":
                # the batch counts keep pandas' plain types (int64, float64 when a run has none)
                out[name] = column.to_pandas()
            else:
                out[name] = column.to_pandas(types_mapper=TO_PANDAS)
            table = table.drop_columns([name])  # each Arrow column goes once converted
        frame = pd.DataFrame(out, columns=list(out), copy=False)
        for column in BOOL_COLUMNS:
            if column in frame.columns:
                frame[column] = frame[column].astype("boolean")
        return frame


class _Fetched:
    """Batches as the driver hands them over, each copied into memory of our own at once.

    The driver's buffers live as long as any column of their batch does, so nothing of
    theirs is kept: descriptive text (``_SHARED_TEXT``) becomes one Python string per
    distinct value, shared by its rows and between batches; every other column is copied
    into Arrow memory that each column owns (strings as ``large_string``, as pandas keeps
    them). The typed first row is dropped at the end.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._batches: list[pa.RecordBatch] = []
        self._objects: dict[str, list[np.ndarray]] = {}
        self._interned: dict[str, str] = {}
        self.arrow = pa.table({})
        self.shared: dict[str, np.ndarray] = {}
        self.first_in_place = False

    def add(self, batch: pa.RecordBatch) -> None:
        if not self.names:
            self.names = [n for n in batch.schema.names if n != "_first"]
        kept, names = [], []
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name in _SHARED_TEXT:
                self._objects.setdefault(name, []).append(self._python_strings(column))
                continue
            if pa.types.is_string(column.type):
                column = column.cast(pa.large_string())
            kept.append(pa.concat_arrays([column]))  # a copy
            names.append(name)
        self._batches.append(pa.RecordBatch.from_arrays(kept, names=names))

    def _python_strings(self, column: pa.Array) -> np.ndarray:
        distinct = pc.unique(column).drop_null()
        values = [self._interned.setdefault(v, v) for v in distinct.to_pylist()]
        lookup = np.array([*values, np.nan], dtype=object)
        return lookup[pc.index_in(column, value_set=distinct).fill_null(len(values)).to_numpy()]

    def done(self) -> _Fetched:
        table = pa.Table.from_batches(self._batches) if self._batches else pa.table({})
        self._batches = []
        self.first_in_place = table.num_rows > 0 and table.column("_first")[0].as_py() == 0
        self.arrow = table.slice(1).drop_columns(["_first"]) if table.num_rows else table
        self.shared = {name: np.concatenate(parts)[1:] for name, parts in self._objects.items()}
        self._objects = {}
        return self


def _in_order(table: pa.Table) -> bool:
    """Whether the rows are in ``started_at, run_id, trial`` order (NULLs first, as in SQL)."""
    keys: list[Any] = []
    for name in (k for k in _ORDER if k in table.column_names):
        column = table.column(name)
        text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        keys += [column.is_valid(), column.fill_null("" if text else 0)]
    if table.num_rows < 2 or not keys:
        return True
    in_order = None  # row i <= row i+1 on the keys seen so far (from the last key back)
    for key in reversed(keys):
        before, after = key.slice(0, len(key) - 1), key.slice(1)
        if in_order is None:
            in_order = pc.less_equal(before, after)
        else:
            in_order = pc.or_(pc.less(before, after), pc.and_(pc.equal(before, after), in_order))
    return bool(pc.all(in_order).as_py())


def filter_results(
    df: pd.DataFrame,
    *,
    sweep: str | Iterable[str] | None = None,
    run: str | Iterable[str] | None = None,
    version: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Keep the rows matching every given filter (see ``load_results``); for frames
    already in memory (``load_results`` selects in SQL)."""
    for column, values in Selection(sweep=sweep, run=run, version=version, backend=backend).items():
        df = df[df[column].isin(values)]
    return df


TRIALS_CSV_MAX = 50_000
"""Above this many trials the raw rows go to ``trials.parquet`` instead of ``trials.csv``
(a CSV of a million trials is 650 MB; the Parquet file is a tenth of that)."""


def write_trials(
    source: str | Path | Store | pd.DataFrame,
    out_dir: str | Path,
    *,
    sweep: str | Iterable[str] | None = None,
    run: str | None = None,
    csv_max: int = TRIALS_CSV_MAX,
) -> Path:
    """Write the selected trials' stored columns as ``trials.csv``, or as
    ``trials.parquet`` when there are more than ``csv_max`` of them.

    From a store the rows are the stored text (list columns JSON, times ISO 8601)
    and a Parquet file is written batch by batch, so memory stays flat; a
    DataFrame goes through ``raw_rows``. A stale file of the other kind is removed.

    Returns
    -------
    Path
        The file written.
    """
    out = Path(out_dir)
    csv, parquet = out / "trials.csv", out / "trials.parquet"
    selection = Selection(sweep=sweep, run=run)
    if isinstance(source, pd.DataFrame):
        rows = raw_rows(source)
        written = csv if len(rows) <= csv_max else parquet
        if written == csv:
            rows.to_csv(csv, index=False)
        else:
            rows.to_parquet(parquet, index=False)
    else:
        with _TrialsQuery.open(_store_path(source)) as query:
            if query.count(selection) <= csv_max:
                written = csv
                query.frame(list(TRIAL_COLUMNS), selection).to_csv(csv, index=False)
            else:
                written = parquet
                query.write_parquet(list(TRIAL_COLUMNS), selection, parquet)
    (parquet if written == csv else csv).unlink(missing_ok=True)
    return written
