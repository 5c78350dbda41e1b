"""Append-only SQLite store of runs and trials, read back as pandas DataFrames.

Each trial row is committed when its try ends, so a crash loses at most the
try in flight. Rows are never updated or deleted; ``UNIQUE(run_id, trial)``
makes a rerun of a recorded trial an error instead of a duplicate.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InfraError, UsageError
from .records import TRIAL_COLUMNS, TrialRecord

_SQL_TYPES = {
    "trial": "INTEGER NOT NULL",
    "duration_s": "REAL",
    "reset_freq": "INTEGER",
    "since_reset": "INTEGER",
    "reset_index": "INTEGER",
    "lane": "INTEGER",
    "layers": "INTEGER",
    "cache_hits": "INTEGER",
    "cache_steps": "INTEGER",
    "cache_pulled": "INTEGER",
    "privileged": "INTEGER",
    "cpus": "INTEGER",
    "attempt": "INTEGER",
    "cycle": "INTEGER",
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sweep_id TEXT,
    cell TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    summary TEXT,
    shard TEXT,
    plan_digest TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    {", ".join(f"{c} {_SQL_TYPES.get(c, 'TEXT')}" for c in TRIAL_COLUMNS)},
    UNIQUE(run_id, trial)
);
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_by_sweep ON trials(sweep_id, cell);
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL,
    cache_type TEXT,
    exporter TEXT,
    location TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    manifest_digest TEXT,
    media_type TEXT,
    layer_count INTEGER,
    empty_layers INTEGER,
    layers TEXT,
    manifest_path TEXT,
    reference TEXT
);
"""


#: ``PRAGMA user_version`` of the layout above. Stores at 0 predate versioning;
#: they gain the newer runs columns (and this version) when a sweep first tags a
#: run in them, never by being read: reading must not change a shipped dataset.
SCHEMA_VERSION = 1
#: runs columns added after the first release, with their SQL types
RUN_COLUMNS_ADDED = {"shard": "TEXT", "plan_digest": "TEXT"}


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """A results store file. Open it with ``Store(path)``; it creates the schema."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (and create, unless ``read_only``) a store.

        ``read_only`` opens without creating or upgrading anything, so analysing a
        shipped or downloaded store never changes it (raw data is never modified).

        Raises:
            UsageError: the file cannot be opened or is not a store.
        """
        self.path = Path(path)
        self.read_only = read_only
        try:
            if read_only:
                if not self.path.is_file():
                    raise UsageError(f"no results store at {self.path}", hint="pass --store")
                # nobody writes a store without a -wal file: open it immutable so that
                # reading leaves no -wal/-shm beside it; a live store is read as it is
                live = Path(f"{self.path}-wal").exists()
                mode = "mode=ro" if live else "immutable=1"
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?{mode}",
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                )
                self._db.row_factory = sqlite3.Row
                self._db.execute("SELECT 1 FROM trials LIMIT 1")
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            if new:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"cannot open results store {self.path}: {exc}",
                hint="point --store at a valid file or move the corrupt one away",
            ) from exc
        except OSError as exc:
            raise UsageError(
                f"cannot create results store {self.path}: {exc}",
                hint="check that data/ is writable",
            ) from exc

    def _add_missing_columns(self) -> None:
        """Stores written by an older version gain the newer columns (as NULL).

        Two runs may open the same old store at once: the check and the upgrade
        happen in one write transaction, so the second run sees the first's
        columns instead of failing on a duplicate one.
        """
        if not self._missing_columns():
            return
        self._db.execute("BEGIN IMMEDIATE")  # waits (busy timeout) for the other writer
        try:
            for column in self._missing_columns():
                sql_type = _SQL_TYPES.get(column, "TEXT").replace(" NOT NULL", "")
                self._db.execute(f"ALTER TABLE trials ADD COLUMN {column} {sql_type}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _missing_columns(self) -> list[str]:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(trials)")}
        return [c for c in TRIAL_COLUMNS if c not in have]

    def _upgrade_runs(self) -> None:
        """Give an older store the runs columns of this version, before writing them."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column, sql_type in RUN_COLUMNS_ADDED.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {sql_type}")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # runs ---------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        params: dict[str, Any],
        *,
        sweep_id: str | None = None,
        cell: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO runs(run_id, sweep_id, cell, started_at, status, params)"
            " VALUES (?, ?, ?, ?, 'running', ?)",
            (run_id, sweep_id, cell, utcnow(), json.dumps(params, default=str)),
        )

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        self._db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, summary = ? WHERE run_id = ?",
            (status, utcnow(), json.dumps(summary, default=str) if summary else None, run_id),
        )

    def tag_run(self, run_id: str, *, shard: str | None, plan_digest: str | None) -> None:
        """Mark a sweep cell's run with its shard and plan, so a merge can check both."""
        self._upgrade_runs()
        self._db.execute(
            "UPDATE runs SET shard = ?, plan_digest = ? WHERE run_id = ?",
            (shard, plan_digest, run_id),
        )

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["params"] = json.loads(out["params"])
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    def runs(self, sweep_id: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT run_id FROM runs", ()
        if sweep_id is not None:
            query, args = query + " WHERE sweep_id = ?", (sweep_id,)
        rows = self._db.execute(query + " ORDER BY started_at", args).fetchall()
        return [self.run(r["run_id"]) for r in rows]  # type: ignore[misc]

    # sweeps -------------------------------------------------------------
    def start_sweep(self, sweep_id: str, plan: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO sweeps(sweep_id, started_at, plan, status) VALUES (?,?,?,?)",
            (sweep_id, utcnow(), json.dumps(plan, default=str), "running"),
        )

    def set_sweep_status(self, sweep_id: str, status: str) -> None:
        self._db.execute("UPDATE sweeps SET status = ? WHERE sweep_id = ?", (status, sweep_id))

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["plan"] = json.loads(out["plan"])
        return out

    # batches: the exported cache of each run ----------------------------
    def record_batch(self, facts: Any) -> None:
        """Keep one run's cache facts (a :class:`~repro_lib.forensics.CacheFacts`); the
        first record of a run stands, so a resumed run keeps what its export held."""
        row = facts.to_row()
        row["recorded_at"] = utcnow()
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            self._db.execute(
                f"INSERT OR IGNORE INTO batches ({columns}) VALUES ({marks})", tuple(row.values())
            )
        except sqlite3.Error as exc:
            raise InfraError(
                f"cannot record the cache facts of {facts.run_id} in {self.path}: {exc}",
                hint="free space or make data/ writable",
            ) from exc

    def batch(self, run_id: str) -> Any:
        from .forensics import CacheFacts

        try:
            row = self._db.execute("SELECT * FROM batches WHERE run_id = ?", (run_id,)).fetchone()
        except sqlite3.OperationalError:  # a read-only store from before batches
            return None
        return CacheFacts.from_row(dict(row)) if row else None

    def batches_frame(self) -> pd.DataFrame:
        try:
            return pd.read_sql_query("SELECT * FROM batches ORDER BY recorded_at", self._db)
        except (sqlite3.Error, pd.errors.DatabaseError):  # a read-only store from before batches
            return pd.DataFrame(
                columns=["run_id", "status", "manifest_digest", "layer_count", "empty_layers"]
            )

    # trials -------------------------------------------------------------
    def append(self, record: TrialRecord) -> None:
        """Commit one trial now.

        Raises:
            InfraError: the store cannot be written (disk full, read-only, locked).
        """
        row = record.to_row()
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            self._db.execute(
                f"INSERT INTO trials ({columns}) VALUES ({marks})", tuple(row.values())
            )
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise InfraError(
                f"cannot record trial {record.trial} of {record.run_id} in {self.path}: {exc}",
                hint="free space or make data/ writable; recorded trials are safe, resume to finish",
            ) from exc

    def append_once(self, record: TrialRecord) -> bool:
        """Commit one trial unless its ``(run_id, trial)`` is already recorded.

        The one writer of a cluster sweep receives records over the network and,
        after a worker died, possibly twice; the first copy stands. Returns
        whether the record was new.

        Raises:
            InfraError: the store cannot be written.
        """
        try:
            self.append(record)
        except sqlite3.IntegrityError:
            return False
        return True

    def trials(self, run_id: str) -> list[TrialRecord]:
        rows = self._db.execute(
            "SELECT * FROM trials WHERE run_id = ? ORDER BY trial", (run_id,)
        ).fetchall()
        return [TrialRecord.from_row(dict(r)) for r in rows]

    def trial_numbers(self, run_id: str) -> set[int]:
        rows = self._db.execute("SELECT trial FROM trials WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def dataframe(self, where: str = "", args: Iterable[Any] = ()) -> pd.DataFrame:
        query = "SELECT * FROM trials" + (f" WHERE {where}" if where else "")
        return pd.read_sql_query(
            query + " ORDER BY started_at, run_id, trial", self._db, params=tuple(args)
        )
