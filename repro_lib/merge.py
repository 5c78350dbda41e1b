"""Merge results stores: shards of a CI matrix, batches from several laptops.

A merge must neither lose a trial nor count one twice, and it must never make a
store that is half merged. So it reads every input (and OUT) first, decides row
by row what is new, identical (skipped) or conflicting, and only when nothing
conflicts writes all new rows to OUT in one transaction. Re-merging a store
adds nothing; two stores that recorded the same ``(run_id, trial)`` with
different content are different experiments under one id, and the merge
refuses rather than pick one.

Every table is copied: ``runs``, ``trials``, ``sweeps`` and any other (e.g.
``batches``) generically by its primary key, unique constraint or whole row,
with columns OUT lacks added to it. A ``provenance`` table records, for every
run, which file it came from and the host facts its trials carry.

A culprit search (``culprit_searches``, ``culprit``, ``culprit_probes``) may be
in several stores at different stages: a killed search in one, the same search
resumed in a copy of it. Its probes are only ever added, so they merge as a
union keyed by ``(search_id, probe)``, and a probe recorded twice must agree on
everything but when it was written. Its settings, status and candidates are
rewritten after every probe, so they come whole from the copy that got furthest
(the most probes, then the latest update); the copies must agree on what was
searched (the range, direction, settings and candidate list).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .plan import plan_digest
from .store import SCHEMA_VERSION, Store, utcnow

PROVENANCE_SQL = """
CREATE TABLE IF NOT EXISTS provenance (
    run_id TEXT NOT NULL,
    source TEXT NOT NULL,
    source_digest TEXT NOT NULL,
    host TEXT,
    kernel TEXT,
    engine_version TEXT,
    merged_at TEXT NOT NULL,
    PRIMARY KEY (run_id, source_digest)
)
"""

#: the key of each known table; other tables use their own primary key or unique index
KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("run_id", "trial"),
    "runs": ("run_id",),
    "sweeps": ("sweep_id",),
    "provenance": ("run_id", "source_digest"),
}
#: runs columns that change while a run progresses (a killed run resumed later);
#: every other column identifies the run and must agree between stores
RUN_PROGRESS = ("status", "finished_at", "summary")
#: the culprit tables whose rows a search rewrites as it goes (one copy of them is kept)
SEARCH_TABLES = ("culprit_searches", "culprit")
#: culprit_searches columns that change while a search progresses
SEARCH_PROGRESS = ("started_at", "updated_at", "status")
#: culprit columns that change while a search builds and probes its candidates
CANDIDATE_PROGRESS = (
    "build",
    "image",
    "build_log",
    "cycles",
    "failing_cycles",
    "tries",
    "posterior",
)
_UNFINISHED = ("failed", "interrupted", "running")  # worst first, for a merged sweep status
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MergeConflict(UsageError):
    """Two stores disagree about one fact; nothing was written."""


@dataclass
class _Table:
    name: str
    sql: str
    columns: dict[str, str]  # name -> declared type
    key: tuple[str, ...]
    rows: list[dict[str, Any]]


@dataclass
class _Source:
    label: str  # the path as the user gave it
    path: Path
    tables: dict[str, _Table]
    digest: str = ""


@dataclass
class SourceResult:
    source: str
    runs: int = 0
    trials_added: int = 0
    trials_present: int = 0
    rows_added: dict[str, int] = field(default_factory=dict)


@dataclass
class MergeResult:
    out: Path
    sources: list[SourceResult]

    @property
    def trials_added(self) -> int:
        return sum(s.trials_added for s in self.sources)


@dataclass
class _SearchCopy:
    """One store's copy of a culprit search: its row, its candidates, how far it got."""

    label: str
    search: dict[str, Any]
    candidates: dict[Any, dict[str, Any]]  # position -> row
    probes: int
    result: SourceResult | None  # None for OUT's own copy


def merge_stores(out: str | Path, sources: Sequence[str | Path]) -> MergeResult:
    """Copy every row of ``sources`` that ``out`` lacks into ``out``.

    Raises:
        MergeConflict: two stores hold one key with different content, or shards
            of one sweep ran different plans. ``out`` is left untouched.
        UsageError: an input is missing, not a results store, or from a newer
            schema. ``out`` is left untouched.
    """
    out = Path(out)
    if not sources:
        raise UsageError("nothing to merge", hint="name at least one store after OUT")
    inputs = [_read(Path(s), str(s)) for s in sources]
    for src in inputs:
        if out.exists() and src.path.resolve() == out.resolve():
            raise UsageError(f"{src.label} is OUT itself", hint="name another output file")
    base = _read(out, str(out)) if out.exists() else _Source(str(out), out, {})
    plan = _Plan(base)
    results = [plan.add(src) for src in inputs]
    plan.settle_searches()
    plan.check_plans()
    plan.write(out)
    return MergeResult(out, results)


@contextlib.contextmanager
def merged_view(stores: Sequence[str | Path]) -> Iterator[Path]:
    """A temporary store holding ``stores`` merged (same checks as ``merge_stores``).

    Lets analysis code that reads one store (notebooks, reports) read several.
    """
    tmp = Path(tempfile.mkdtemp(prefix="repro-lib-merged-"))
    try:
        path = tmp / "merged.sqlite"
        merge_stores(path, stores)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# reading ---------------------------------------------------------------------
def _read(path: Path, label: str) -> _Source:
    if not path.is_file():
        raise UsageError(f"no results store at {label}", hint="check the path of each store")
    # A store nobody writes has no -wal file: open it immutable so reading leaves
    # no -wal/-shm files beside it (a shipped dataset, a downloaded artifact).
    # With a -wal file (a live or crashed writer) its recent trials are there.
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open {label}: {exc}", hint="check the file") from None
    try:
        db.row_factory = sqlite3.Row
        version = db.execute("PRAGMA user_version").fetchone()[0]
        names = [
            r["name"]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if "trials" not in names:
            raise UsageError(
                f"{label} is not a results store (it has no trials table)",
                hint="merge only stores written by repro-lib",
            )
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"{label} has store schema {version}, newer than this repro-lib's {SCHEMA_VERSION}",
                hint="upgrade repro-lib to merge it",
            )
        tables = {name: _read_table(db, name) for name in names}
    except sqlite3.DatabaseError as exc:
        raise UsageError(
            f"{label} is not a readable results store: {exc}",
            hint="check the file (an incomplete download or another kind of file?)",
        ) from None
    finally:
        db.close()
    for column in KEYS["trials"]:
        if column not in tables["trials"].columns:
            raise UsageError(
                f"{label} cannot be upgraded: its trials table has no {column} column",
                hint="merge only stores written by repro-lib",
            )
    source = _Source(label, path, tables)
    source.digest = _digest(tables)
    return source


def _read_table(db: sqlite3.Connection, name: str) -> _Table:
    if not _NAME.match(name):
        raise UsageError(f"table name {name!r} cannot be merged", hint="rename or drop that table")
    info = db.execute(f'PRAGMA table_info("{name}")').fetchall()
    columns = {r["name"]: r["type"] or "" for r in info}
    for column in columns:
        if not _NAME.match(column):
            raise UsageError(f"column {name}.{column} cannot be merged", hint="rename it")
    key = KEYS.get(name)
    if key is None:
        pk = [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]]
        key = tuple(pk) or _unique_columns(db, name) or tuple(columns)
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    rows = [dict(r) for r in db.execute(f'SELECT * FROM "{name}"')]
    return _Table(name, sql, columns, key, rows)


def _unique_columns(db: sqlite3.Connection, name: str) -> tuple[str, ...]:
    for index in db.execute(f'PRAGMA index_list("{name}")').fetchall():
        if index["unique"]:
            cols = db.execute(f'PRAGMA index_info("{index["name"]}")').fetchall()
            return tuple(c["name"] for c in cols)
    return ()


def _digest(tables: dict[str, _Table]) -> str:
    """A hash of a store's content (not its bytes, which WAL state changes)."""
    h = hashlib.sha256()
    for name in sorted(t for t in tables if t != "provenance"):
        table = tables[name]
        for row in sorted(json.dumps(r, sort_keys=True, default=str) for r in table.rows):
            h.update(f"{name}\t{row}\n".encode())
    return h.hexdigest()[:16]


# deciding --------------------------------------------------------------------
def _key(table: _Table, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(c) for c in table.key)


def _differences(a: dict[str, Any], b: dict[str, Any], skip: Sequence[str] = ()) -> list[str]:
    return [c for c in a if c in b and c not in skip and a[c] != b[c]]


class _Plan:
    """What OUT will hold: its own rows plus what each source adds."""

    def __init__(self, base: _Source) -> None:
        self.columns: dict[str, dict[str, str]] = {
            n: dict(t.columns) for n, t in base.tables.items()
        }
        self.create_sql: dict[str, str] = {}
        self.rows: dict[str, dict[tuple[Any, ...], tuple[str, dict[str, Any]]]] = {
            n: {_key(t, r): (base.label, r) for r in t.rows} for n, t in base.tables.items()
        }
        self.keys = {n: t.key for n, t in base.tables.items()}
        self.new: dict[str, list[dict[str, Any]]] = {}
        self.updates: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.searches: dict[Any, list[_SearchCopy]] = {}
        self._collect_searches(base, None)

    def add(self, src: _Source) -> SourceResult:
        result = SourceResult(src.label)
        for name, table in src.tables.items():
            if name not in self.columns:
                self.columns[name] = {}
                self.create_sql[name] = table.sql
                self.rows[name] = {}
                self.keys[name] = table.key
            for column, sql_type in table.columns.items():
                self.columns[name].setdefault(column, sql_type)
            if name in SEARCH_TABLES:
                continue  # one copy of each search is kept: settle_searches picks it
            before = len(self.new.get(name, []))
            for row in table.rows:
                present = self._add_row(name, row, src)
                if name == "trials":
                    result.trials_added += not present
                    result.trials_present += present
            result.rows_added[name] = len(self.new.get(name, [])) - before
        result.runs = self._provenance(src)
        self._collect_searches(src, result)
        return result

    def _add_row(self, name: str, row: dict[str, Any], src: _Source) -> bool:
        """Record ``row`` as new, or check it against the row already there (True)."""
        key = tuple(row.get(c) for c in self.keys[name])
        seen = self.rows[name].get(key)
        if seen is None:
            self.rows[name][key] = (src.label, row)
            self.new.setdefault(name, []).append(row)
            return False
        where, old = seen
        if name == "runs":
            self._merge_run(key, where, old, src.label, row)
        elif name == "sweeps":
            self._merge_sweep(key, where, old, src.label, row)
        elif name == "provenance":
            pass  # the first record of where a run came from stands
        elif name == "culprit_probes":
            differ = _differences(old, row, skip=("recorded_at",))
            if differ:
                shown = ", ".join(f"{c} {old[c]!r} vs {row[c]!r}" for c in differ[:2])
                raise MergeConflict(
                    f"{where} and {src.label} both hold probe {row.get('probe')} of culprit "
                    f"search {row.get('search_id')} with different content ({shown})",
                    hint="they are different searches under one id: merge only one of them",
                )
        else:
            differ = _differences(old, row)
            if differ:
                what = (
                    f"trial {row.get('trial')} of run {row.get('run_id')}"
                    if name == "trials"
                    else f"{name} row {dict(zip(self.keys[name], key, strict=True))}"
                )
                shown = ", ".join(f"{c} {old[c]!r} vs {row[c]!r}" for c in differ[:2])
                raise MergeConflict(
                    f"{where} and {src.label} both hold {what} with different content ({shown})",
                    hint="they are different runs under one id: rerun one with its own --sweep-id",
                )
        return True

    def _merge_run(
        self, key: tuple[Any, ...], where: str, old: dict[str, Any], label: str, row: dict[str, Any]
    ) -> None:
        differ = [
            c
            for c in _differences(old, row, skip=RUN_PROGRESS)
            if old[c] is not None and row[c] is not None
        ]
        if differ:
            raise MergeConflict(
                f"{where} and {label} both hold run {key[0]} with different {', '.join(differ)}",
                hint="they are different runs under one id: rerun one with its own --sweep-id",
            )
        merged = {c: old[c] if old[c] is not None else row.get(c) for c in old}
        for c in row:
            merged.setdefault(c, row[c])
        # a run killed in one store and finished in another: the finished record stands
        if (row.get("finished_at") or "") > (old.get("finished_at") or ""):
            for c in RUN_PROGRESS:
                merged[c] = row.get(c)
        self._replace("runs", key, where, old, merged)

    def _merge_sweep(
        self, key: tuple[Any, ...], where: str, old: dict[str, Any], label: str, row: dict[str, Any]
    ) -> None:
        digests = [plan_digest(json.loads(r["plan"])) for r in (old, row)]
        if digests[0] != digests[1]:
            raise MergeConflict(
                f"sweep {key[0]} ran different plans in {where} (plan {digests[0]}) "
                f"and {label} (plan {digests[1]})",
                hint="shards of one sweep must run one plan: rerun the odd shard with the others' options",
            )
        merged = dict(old)
        merged["started_at"] = min(old["started_at"], row["started_at"])
        statuses = {old.get("status"), row.get("status")}
        merged["status"] = next((s for s in _UNFINISHED if s in statuses), old.get("status"))
        self._replace("sweeps", key, where, old, merged)

    def _replace(
        self,
        name: str,
        key: tuple[Any, ...],
        where: str,
        old: dict[str, Any],
        merged: dict[str, Any],
    ) -> None:
        if merged == old:
            return
        self.rows[name][key] = (where, merged)
        pending = self.new.get(name, [])
        for i, r in enumerate(pending):
            if r is old:
                pending[i] = merged
                return
        self.updates.setdefault(name, {})[key] = merged

    def _provenance(self, src: _Source) -> int:
        trials = src.tables["trials"].rows
        runs = sorted(
            {r["run_id"] for r in trials}
            | {r["run_id"] for r in src.tables.get("runs", _Table("", "", {}, (), [])).rows}
        )
        facts: dict[str, dict[str, set[str]]] = {}
        for r in trials:
            f = facts.setdefault(r["run_id"], {"host": set(), "kernel": set(), "engine": set()})
            for name, column in (
                ("host", "host"),
                ("kernel", "kernel"),
                ("engine", "engine_version"),
            ):
                if r.get(column):
                    f[name].add(str(r[column]))
        if "provenance" not in self.columns:
            self.columns["provenance"] = {}
            self.rows["provenance"] = {}
            self.keys["provenance"] = KEYS["provenance"]
        now = utcnow()
        for run_id in runs:
            f = facts.get(run_id, {"host": set(), "kernel": set(), "engine": set()})
            row = {
                "run_id": run_id,
                "source": src.label,
                "source_digest": src.digest,
                "host": ", ".join(sorted(f["host"])) or None,
                "kernel": ", ".join(sorted(f["kernel"])) or None,
                "engine_version": ", ".join(sorted(f["engine"])) or None,
                "merged_at": now,
            }
            key = (run_id, src.digest)
            if key not in self.rows["provenance"]:
                self.rows["provenance"][key] = (src.label, row)
                self.new.setdefault("provenance", []).append(row)
        return len(runs)

    def _collect_searches(self, src: _Source, result: SourceResult | None) -> None:
        if "culprit_searches" not in src.tables:
            return  # a store from before culprit searches
        empty = _Table("", "", {}, (), [])
        candidates: dict[Any, dict[Any, dict[str, Any]]] = {}
        for row in src.tables.get("culprit", empty).rows:
            candidates.setdefault(row["search_id"], {})[row["position"]] = row
        probes: dict[Any, int] = {}
        for row in src.tables.get("culprit_probes", empty).rows:
            probes[row["search_id"]] = probes.get(row["search_id"], 0) + 1
        for row in src.tables["culprit_searches"].rows:
            sid = row["search_id"]
            copy = _SearchCopy(src.label, row, candidates.get(sid, {}), probes.get(sid, 0), result)
            self.searches.setdefault(sid, []).append(copy)

    def settle_searches(self) -> None:
        """Keep each culprit search's row and candidates from the copy that got furthest
        (its probes were merged row by row); copies of one search that searched
        different things are refused."""
        for sid, copies in self.searches.items():
            first = copies[0]
            for other in copies[1:]:
                self._check_same_search(sid, first, other)
            furthest = max(copies, key=lambda c: (c.probes, c.search.get("updated_at") or ""))
            search = dict(furthest.search)
            search["started_at"] = min(c.search["started_at"] for c in copies)
            self._keep("culprit_searches", search, furthest)
            for row in furthest.candidates.values():
                self._keep("culprit", row, furthest)

    def _check_same_search(self, sid: Any, first: _SearchCopy, other: _SearchCopy) -> None:
        hint = "they are different searches under one id: merge only one of them"
        differ = [
            c
            for c in _differences(first.search, other.search, skip=SEARCH_PROGRESS)
            if first.search[c] is not None and other.search[c] is not None
        ]
        if differ:
            raise MergeConflict(
                f"{first.label} and {other.label} both hold culprit search {sid} "
                f"with different {', '.join(differ)}",
                hint=hint,
            )
        if first.candidates.keys() != other.candidates.keys():
            raise MergeConflict(
                f"{first.label} and {other.label} both hold culprit search {sid} with "
                f"{len(first.candidates)} and {len(other.candidates)} candidates",
                hint=hint,
            )
        for position, row in first.candidates.items():
            differ = _differences(row, other.candidates[position], skip=CANDIDATE_PROGRESS)
            if differ:
                raise MergeConflict(
                    f"{first.label} and {other.label} both hold culprit search {sid} with "
                    f"candidate {position} different ({', '.join(differ)})",
                    hint=hint,
                )

    def _keep(self, name: str, row: dict[str, Any], copy: _SearchCopy) -> None:
        key = tuple(row.get(c) for c in self.keys[name])
        seen = self.rows[name].get(key)
        if seen is None:
            self.rows[name][key] = (copy.label, row)
            self.new.setdefault(name, []).append(row)
            if copy.result is not None:
                copy.result.rows_added[name] = copy.result.rows_added.get(name, 0) + 1
        else:
            self._replace(name, key, seen[0], seen[1], row)

    def check_plans(self) -> None:
        """Every run of one sweep must carry one plan digest (its shards ran one plan)."""
        seen: dict[str, tuple[str, str]] = {}
        for where, run in self.rows.get("runs", {}).values():
            sweep, digest = run.get("sweep_id"), run.get("plan_digest")
            if not sweep or not digest:
                continue
            first = seen.setdefault(sweep, (digest, where))
            if first[0] != digest:
                raise MergeConflict(
                    f"sweep {sweep} ran different plans in {first[1]} (plan {first[0]}) "
                    f"and {where} (plan {digest})",
                    hint="shards of one sweep must run one plan: rerun the odd shard with the others' options",
                )

    # writing ---------------------------------------------------------------
    def write(self, out: Path) -> None:
        if out.exists() and not any(self.new.values()) and not any(self.updates.values()):
            return  # nothing new: OUT is not even opened for writing
        with Store(out):
            pass  # creates OUT or upgrades its layout to this version's
        with contextlib.closing(sqlite3.connect(out, timeout=30, isolation_level=None)) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute(PROVENANCE_SQL)
                for name, sql in self.create_sql.items():
                    if name not in _tables(db) and sql:
                        db.execute(sql)
                for name, columns in self.columns.items():
                    have = {r[1] for r in db.execute(f'PRAGMA table_info("{name}")')}
                    for column, sql_type in columns.items():
                        if column not in have:  # a declared type: constraints are not part of it
                            db.execute(f'ALTER TABLE "{name}" ADD COLUMN "{column}" {sql_type}')
                for name, rows in self.new.items():
                    for row in rows:
                        cols = ", ".join(f'"{c}"' for c in row)
                        marks = ", ".join("?" for _ in row)
                        db.execute(
                            f'INSERT INTO "{name}" ({cols}) VALUES ({marks})', tuple(row.values())
                        )
                for name, changed in self.updates.items():
                    for key, row in changed.items():
                        sets = ", ".join(f'"{c}" = ?' for c in row)
                        where = " AND ".join(f'"{c}" = ?' for c in self.keys[name])
                        db.execute(
                            f'UPDATE "{name}" SET {sets} WHERE {where}', (*row.values(), *key)
                        )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
