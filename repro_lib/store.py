"""Append-only SQLite store of runs and trials, read back as pandas DataFrames.

Each trial row is committed when its try ends, so a crash loses at most the
try in flight. Rows are never updated or deleted; ``UNIQUE(run_id, trial)``
makes a rerun of a recorded trial an error instead of a duplicate. A culprit
search's rows (``culprit_searches``, ``culprit``: its settings, status and
candidates) are rewritten as it goes; its probes (``culprit_probes``) are only
added.

Several processes may open, create and write one store at once: a new store
appears complete (built beside its path and linked into place), and an older
store is upgraded by one opener while the others wait for it. SQLite's WAL mode
needs a local filesystem, so a store on a network filesystem is refused for
writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .culprit import CandidateRow, ProbeRow, SearchRecord
from .errors import InfraError, UsageError
from .forensics import CacheFacts
from .records import TRIAL_COLUMNS, TrialRecord

#: seconds a writer waits for another one (SQLite's busy timeout), also while
#: another process creates or upgrades the store
BUSY_TIMEOUT_S = 30


@dataclass(frozen=True)
class Column:
    """One column of a store table.

    A store written before the column existed gains it when a writer next opens
    the store: its older rows hold NULL, or ``backfill`` when given (an SQL
    expression over the row's other columns).
    """

    name: str
    sql_type: str = "TEXT"
    backfill: str | None = None

    def added(self, table: str) -> list[str]:
        """The statements that give an existing ``table`` this column."""
        # ALTER TABLE cannot add a key or a NOT NULL column without a default
        sql_type = re.sub(r"\s*\b(NOT NULL|PRIMARY KEY|UNIQUE)\b", "", self.sql_type)
        statements = [f"ALTER TABLE {table} ADD COLUMN {self.name} {sql_type}"]
        if self.backfill:
            statements.append(f"UPDATE {table} SET {self.name} = ({self.backfill})")
        return statements


@dataclass(frozen=True)
class Table:
    """A store table: its columns, then its constraints (e.g. a UNIQUE clause)."""

    columns: tuple[Column, ...]
    constraints: str = ""

    def create(self, name: str) -> str:
        columns = ", ".join(f"{c.name} {c.sql_type}" for c in self.columns)
        tail = f", {self.constraints}" if self.constraints else ""
        return f"CREATE TABLE {name} ({columns}{tail})"


#: trials columns that are not plain TEXT; every other name in TRIAL_COLUMNS is
_TRIAL_TYPES = {
    c.name: c
    for c in (
        Column("trial", "INTEGER NOT NULL"),
        Column("duration_s", "REAL"),
        Column("reset_freq", "INTEGER"),
        Column("since_reset", "INTEGER"),
        Column("reset_index", "INTEGER"),
        Column("lane", "INTEGER"),
        Column("layers", "INTEGER"),
        Column("cache_hits", "INTEGER"),
        Column("cache_steps", "INTEGER"),
        Column("cache_pulled", "INTEGER"),
        Column("privileged", "INTEGER"),
        Column("cpus", "INTEGER"),
        Column("attempt", "INTEGER"),
        # the trial number of the first try of the reset cycle; load_results derives
        # it for rows written before it existed
        Column("cycle", "INTEGER"),
    )
}

#: Every table of a store, column by column. Adding a column here (or a field to TrialRecord) is the
#: whole upgrade: existing stores gain it, once, when a writer opens them.
TABLES: dict[str, Table] = {
    "runs": Table(
        (
            Column("run_id", "TEXT PRIMARY KEY"),
            Column("sweep_id"),
            Column("cell"),
            Column("started_at", "TEXT NOT NULL"),
            Column("finished_at"),
            Column("status", "TEXT NOT NULL"),
            Column("params", "TEXT NOT NULL"),
            Column("summary"),
            Column("shard"),
            Column("plan_digest"),
        ),
    ),
    "trials": Table(
        tuple(_TRIAL_TYPES.get(name, Column(name)) for name in TRIAL_COLUMNS),
        "UNIQUE(run_id, trial)",
    ),
    "sweeps": Table(
        (
            Column("sweep_id", "TEXT PRIMARY KEY"),
            Column("started_at", "TEXT NOT NULL"),
            Column("plan", "TEXT NOT NULL"),
            Column("status", "TEXT NOT NULL"),
        ),
    ),
    "batches": Table(
        (
            Column("run_id", "TEXT PRIMARY KEY"),
            Column("recorded_at", "TEXT NOT NULL"),
            Column("cache_type"),
            Column("exporter"),
            Column("location"),
            Column("status", "TEXT NOT NULL"),
            Column("detail"),
            Column("manifest_digest"),
            Column("media_type"),
            Column("layer_count", "INTEGER"),
            Column("empty_layers", "INTEGER"),
            Column("layers"),
            Column("manifest_path"),
            Column("reference"),
        ),
    ),
    # culprit searches (repro_lib.bisect): a search's settings and status, one row per
    # search and candidate (its build and standing, rewritten after every probe and
    # build), one row per probe (its trials are in ``trials`` under its sweep id)
    "culprit_searches": Table(
        (
            Column("search_id", "TEXT PRIMARY KEY"),
            Column("started_at", "TEXT NOT NULL"),
            Column("updated_at", "TEXT NOT NULL"),
            Column("kind", "TEXT NOT NULL"),
            Column("repo"),
            Column("good", "TEXT NOT NULL"),
            Column("bad", "TEXT NOT NULL"),
            Column("direction", "TEXT NOT NULL"),
            Column("confidence", "REAL NOT NULL"),
            Column("max_tries", "INTEGER NOT NULL"),
            Column("tries_per_cycle", "INTEGER NOT NULL"),
            Column("status", "TEXT NOT NULL"),
            Column("settings", "TEXT NOT NULL"),
        ),
    ),
    "culprit": Table(
        (
            Column("search_id", "TEXT NOT NULL"),
            Column("position", "INTEGER NOT NULL"),
            Column("ref", "TEXT NOT NULL"),
            Column("short", "TEXT NOT NULL"),
            Column("subject"),
            Column("build", "TEXT NOT NULL"),
            Column("image"),
            Column("build_log"),
            Column("cycles", "INTEGER NOT NULL"),
            Column("failing_cycles", "INTEGER NOT NULL"),
            Column("tries", "INTEGER NOT NULL"),
            Column("posterior", "REAL NOT NULL"),
        ),
        "UNIQUE(search_id, position)",
    ),
    "culprit_probes": Table(
        (
            Column("search_id", "TEXT NOT NULL"),
            Column("probe", "INTEGER NOT NULL"),
            Column("position", "INTEGER NOT NULL"),
            Column("ref", "TEXT NOT NULL"),
            Column("sweep_id", "TEXT NOT NULL"),
            Column("cycles", "INTEGER NOT NULL"),
            Column("failing_cycles", "INTEGER NOT NULL"),
            Column("tries", "INTEGER NOT NULL"),
            Column("best_ref", "TEXT NOT NULL"),
            Column("best_posterior", "REAL NOT NULL"),
            Column("recorded_at", "TEXT NOT NULL"),
        ),
        "UNIQUE(search_id, probe)",
    ),
}
#: the indexes of a store, by name
INDEXES = {
    "trials_by_sweep": "CREATE INDEX IF NOT EXISTS trials_by_sweep ON trials(sweep_id, cell)",
}

#: ``PRAGMA user_version`` of the layout above. Stores at 0 predate versioning;
#: a writer opening one brings it to this layout and version. Reading (``read_only``)
#: never changes a store: a shipped dataset stays as it was.
SCHEMA_VERSION = 1

#: filesystems whose locks and shared memory SQLite's WAL mode cannot rely on
#: (https://sqlite.org/wal.html: "WAL does not work over a network filesystem")
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "fuse.ceph-fuse",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
    }
)
#: where Linux lists the mounts this process sees, with their filesystem types
MOUNTS = Path("/proc/mounts")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem that holds ``path`` (``ext4``, ``nfs4``, ...).

    Read from /proc/mounts: the mount point nearest to the path wins, and of two
    mounts on one point the later, which hides the earlier. None where there is
    no /proc/mounts (not Linux).
    """
    try:
        lines = MOUNTS.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    nearest, fs_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # spaces and other blanks in a mount point are written as octal escapes
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(nearest):
            nearest, fs_type = point, fields[2]
    return fs_type


def _refuse_network_filesystem(path: Path) -> None:
    fs_type = filesystem_type(path)
    if fs_type in NETWORK_FILESYSTEMS:
        raise UsageError(
            f"results store {path} is on a network filesystem ({fs_type}), "
            "where SQLite's WAL mode can lose or corrupt rows",
            hint="pass --store on a local disk (e.g. under /var/tmp), "
            "then copy it or `repro-lib merge` it where you want it",
        )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def _create(path: Path) -> None:
    """Make a new store at ``path`` in one step, so that nobody sees it half made.

    It is built under a private name beside ``path`` and hard-linked into place:
    of several processes creating one store at once, one link wins and the
    others open that store. Where there are no hard links, openers make it in
    place, waiting for each other (see ``_use_wal`` and ``_upgrade``).
    """
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    try:
        db = _connect(draft)
        try:
            _upgrade(db)
            # last, so that every table is in the main file and the -wal the
            # switch makes is empty and goes away with the connection
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        # OSError: another process linked its store first (open that one), or
        # this filesystem has no hard links (make the store in place)
        with contextlib.suppress(OSError):
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the store in WAL mode (a no-op for every store this module created).

    The switch needs the database to itself, and SQLite does not wait for that
    as it waits for a write lock: it fails at once while another process has the
    store open. So an opener retries until the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(0.005, 0.05))  # at random, so that one opener gets through


def _is_busy(exc: sqlite3.Error) -> bool:
    return "database is locked" in str(exc)  # SQLITE_BUSY; its code is not exposed before 3.11


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _is_current(db: sqlite3.Connection) -> bool:
    """Whether the store has this version's layout: every table, column and index."""
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        return False
    for name, table in TABLES.items():
        if not {c.name for c in table.columns} <= _columns(db, name):
            return False
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return set(INDEXES) <= indexes


def _upgrade(db: sqlite3.Connection) -> None:
    """Create what the store lacks of this version's layout, in one write transaction.

    BEGIN IMMEDIATE takes the write lock first, waiting (busy timeout) for
    another upgrader; what is missing is decided inside the transaction, so the
    next opener finds the work done instead of failing on a duplicate column.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, table in TABLES.items():
            have = _columns(db, name)
            if not have:
                db.execute(table.create(name))
                continue
            for column in table.columns:
                if column.name not in have:
                    for statement in column.added(name):
                        db.execute(statement)
        for sql in INDEXES.values():
            db.execute(sql)
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            db.execute("ROLLBACK")
        raise


class Store:
    """A results store file. Open it with ``Store(path)``; it creates the schema."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (and create, unless ``read_only``) a store.

        ``read_only`` opens without creating or upgrading anything, so analysing a
        shipped or downloaded store never changes it (raw data is never modified).
        Otherwise the store is created, or brought to this version's layout, by
        whichever process comes first; others opening it meanwhile wait for that
        (up to ``BUSY_TIMEOUT_S``), then go on.

        Raises:
            UsageError: the file cannot be opened or is not a store; or, for
                writing, it is on a network filesystem.
        """
        self.path = Path(path)
        self.read_only = read_only
        try:
            self._db = self._open_read_only() if read_only else self._open_for_writing()
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

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise UsageError(f"no results store at {self.path}", hint="pass --store")
        # nobody writes a store without a -wal file: open it immutable so that
        # reading leaves no -wal/-shm beside it; a live store is read as it is
        live = Path(f"{self.path}-wal").exists()
        mode = "mode=ro" if live else "immutable=1"
        db = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?{mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
        )
        db.row_factory = sqlite3.Row
        try:
            db.execute("SELECT 1 FROM trials LIMIT 1")
        except BaseException:
            db.close()
            raise
        return db

    def _open_for_writing(self) -> sqlite3.Connection:
        _refuse_network_filesystem(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            _create(self.path)
        db = _connect(self.path)
        try:
            _use_wal(db)
            db.execute("PRAGMA synchronous=FULL")
            if not _is_current(db):
                _upgrade(db)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # writing rows -------------------------------------------------------
    def _insert(
        self, table: str, row: dict[str, Any], what: str, *, or_ignore: bool = False
    ) -> None:
        """Commit one row: the one way ``append`` and ``record_batch`` write.

        Raises:
            sqlite3.IntegrityError: the row's key is taken (not with
                ``or_ignore``); what that means is for the caller to say.
            InfraError: the store cannot be written (disk full, read-only, locked).
        """
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        try:
            self._db.execute(
                f"{verb} INTO {table} ({columns}) VALUES ({marks})", tuple(row.values())
            )
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise InfraError(
                f"cannot record {what} in {self.path}: {exc}",
                hint="free space or make data/ writable; recorded trials are safe, resume to finish",
            ) from exc

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
        self._insert("batches", row, f"the cache facts of {facts.run_id}", or_ignore=True)

    def batch(self, run_id: str) -> Any:
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
        self._insert("trials", record.to_row(), f"trial {record.trial} of {record.run_id}")

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

    # culprit searches ---------------------------------------------------
    def save_search(self, record: SearchRecord, settings: dict[str, Any] | None = None) -> None:
        """Write a search as it stands, in one transaction: its settings and status,
        every candidate's row, and the probes not yet recorded (a probe's row, once
        written, stands). ``settings`` (what a resume needs: the probe plan, the build
        hook) is kept from the first save when not given.

        Raises:
            InfraError: the store cannot be written.
        """
        now = utcnow()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            old = self._db.execute(
                "SELECT started_at, settings FROM culprit_searches WHERE search_id = ?",
                (record.search_id,),
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO culprit_searches(search_id, started_at, updated_at, kind,"
                " repo, good, bad, direction, confidence, max_tries, tries_per_cycle, status,"
                " settings) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.search_id,
                    old["started_at"] if old else now,
                    now,
                    record.kind,
                    record.repo,
                    record.good,
                    record.bad,
                    record.direction,
                    record.confidence,
                    record.max_tries,
                    record.tries_per_cycle,
                    record.status,
                    json.dumps(settings, default=str)
                    if settings is not None
                    else (old["settings"] if old else "{}"),
                ),
            )
            for c in record.candidates:
                self._db.execute(
                    "INSERT OR REPLACE INTO culprit(search_id, position, ref, short, subject,"
                    " build, image, build_log, cycles, failing_cycles, tries, posterior)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.search_id,
                        c.position,
                        c.ref,
                        c.short,
                        c.subject,
                        c.build,
                        c.image,
                        c.build_log,
                        c.cycles,
                        c.failing_cycles,
                        c.tries,
                        c.posterior,
                    ),
                )
            for p in record.probes:
                self._db.execute(
                    "INSERT OR IGNORE INTO culprit_probes(search_id, probe, position, ref,"
                    " sweep_id, cycles, failing_cycles, tries, best_ref, best_posterior,"
                    " recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.search_id,
                        p.probe,
                        p.position,
                        p.ref,
                        p.sweep_id,
                        p.cycles,
                        p.failing_cycles,
                        p.tries,
                        p.best_ref,
                        p.best_posterior,
                        now,
                    ),
                )
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise InfraError(
                    f"cannot record culprit search {record.search_id} in {self.path}: {exc}",
                    hint="free space or make data/ writable; resume the search to finish",
                ) from exc
            raise

    def searches(self, search_id: str | None = None) -> list[SearchRecord]:
        """Every recorded culprit search (or the one named), oldest first; [] for a
        store from before culprit searches."""
        query, args = "SELECT * FROM culprit_searches", ()
        if search_id is not None:
            query, args = query + " WHERE search_id = ?", (search_id,)
        try:
            rows = self._db.execute(query + " ORDER BY started_at, search_id", args).fetchall()
        except sqlite3.OperationalError:  # a read-only store from before culprit searches
            return []
        out = []
        for row in rows:
            sid = row["search_id"]
            candidates = self._db.execute(
                "SELECT * FROM culprit WHERE search_id = ? ORDER BY position", (sid,)
            ).fetchall()
            probes = self._db.execute(
                "SELECT * FROM culprit_probes WHERE search_id = ? ORDER BY probe", (sid,)
            ).fetchall()
            out.append(
                SearchRecord(
                    search_id=sid,
                    kind=row["kind"],
                    repo=row["repo"],
                    good=row["good"],
                    bad=row["bad"],
                    direction=row["direction"],
                    confidence=row["confidence"],
                    max_tries=row["max_tries"],
                    tries_per_cycle=row["tries_per_cycle"],
                    status=row["status"],
                    candidates=tuple(
                        CandidateRow(**{k: c[k] for k in CandidateRow.__dataclass_fields__})
                        for c in candidates
                    ),
                    probes=tuple(
                        ProbeRow(**{k: p[k] for k in ProbeRow.__dataclass_fields__}) for p in probes
                    ),
                )
            )
        return out

    def search_settings(self, search_id: str) -> dict[str, Any] | None:
        """What :meth:`save_search` kept for resuming ``search_id``; None when unknown."""
        try:
            row = self._db.execute(
                "SELECT settings FROM culprit_searches WHERE search_id = ?", (search_id,)
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        return json.loads(row["settings"]) if row else None
