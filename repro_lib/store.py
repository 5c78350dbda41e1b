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
    summary TEXT
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
"""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """A results store file. Open it with ``Store(path)``; it creates the schema."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
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
