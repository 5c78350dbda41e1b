"""Analysis at scale: time and peak memory of loading, reporting and merging big stores.

The stores are synthetic but made of real rows: every run of a source store
(the shipped findings dataset by default) is copied again and again with a new
run id (``<run id>-x<copy>``) and its times shifted by a whole number of
source spans, so the copies never overlap in time, until the store holds the
wanted number of trials. Sweep ids and cells are kept, so ``--sweep`` selects
the same share of the store at every size, and the schema is the project's
own. Each step runs in a fresh Python process that reports its wall time and
peak resident memory (``ru_maxrss``), so one step's memory never counts for
the next. With ``--against REF`` every step also runs on the code of a git
revision (exported with ``git archive`` into a temporary directory), in the
same session on the same stores, and the table shows the ratio; that
revision runs without the packages its ``pyproject.toml`` does not ask for
(pyarrow and the ADBC driver, for revisions before this benchmark), as it ran
when it was current. Wall times on a busy machine grow with the load; the
CPU time beside them does not.

Steps: ``load_results`` of the whole store; ``report`` of the whole store;
``report --sweep`` (the largest sweep); ``merge`` of the store's two halves
(even and odd copies) into a new file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Paths
from .records import TRIAL_COLUMNS
from .store import Store

#: store sizes by name; ``1m`` is left out of the default run (minutes, GBs)
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
DEFAULT_SIZES = ("10k", "100k")
STEPS = ("load_results", "report", "report --sweep", "merge halves")

#: per step: (imports, timed code); imports are not timed (they are the same for every size),
#: but their memory is part of the peak (about 130 MiB for load_results, 300 MiB for report)
_STEP_CODE = {
    "load_results": (
        "from repro_lib.results import load_results",
        "rows = len(load_results(STORE))",
    ),
    "report": (
        "from repro_lib.report import write_report; import statsmodels.api, matplotlib.figure",
        "write_report(STORE, OUT)",
    ),
    "report --sweep": (
        "from repro_lib.report import write_report; import statsmodels.api, matplotlib.figure",
        "write_report(STORE, OUT, sweep=SWEEP)",
    ),
    "merge halves": (
        "from repro_lib.merge import merge_stores",
        'merge_stores(OUT + "/merged.sqlite", [HALF_A, HALF_B])',
    ),
}
_CHILD = """
import json, resource, sys, time
STORE, OUT, SWEEP, HALF_A, HALF_B = sys.argv[1:6]  # argv[6]: the code's directory
HIDDEN = set(sys.argv[7].split(",")) - {{""}}  # packages this code ran without


class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"{{name}} is hidden", name=name)
        return None


sys.meta_path.insert(0, Hide())
import matplotlib
matplotlib.use("Agg")
{imports}
import repro_lib
assert repro_lib.__file__.startswith(sys.argv[6]), repro_lib.__file__
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu_start = time.perf_counter(), cpu()
{code}
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": peak}}))
"""


@dataclass(frozen=True)
class Measurement:
    """One step on one store with one version of the code (median over repeats)."""

    size: str
    trials: int
    step: str
    code: str  # "this" or the --against revision
    seconds: float  # wall time
    cpu_seconds: float  # user + system time of the process: what a busy machine does not inflate
    peak_bytes: int


# synthetic stores -------------------------------------------------------------
def _span_seconds(db: sqlite3.Connection) -> int:
    """Whole seconds from the first to the last time in the source, plus an hour."""
    first, last = db.execute(
        "SELECT min(julianday(started_at)), max(julianday(finished_at)) FROM src.runs"
    ).fetchone()
    t_first, t_last = db.execute(
        "SELECT min(julianday(started_at)), max(julianday(started_at)) FROM src.trials"
    ).fetchone()
    low = min(v for v in (first, t_first) if v is not None)
    high = max(v for v in (last, t_last) if v is not None)
    return int((high - low) * 86400) + 3600


def _shifted(column: str) -> str:
    """SQL moving an ISO-8601 UTC time by ``:shift`` seconds, in the store's own format."""
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE "
        f"strftime('%Y-%m-%dT%H:%M:%f', {column}, :shift || ' seconds') || '+00:00' END"
    )


def build_store(source: str | Path, out: str | Path, copies: Sequence[int]) -> int:
    """Write a store holding the given copies of every run of ``source``.

    Copy 0 is the source itself; copy ``i`` has run ids ``<run id>-x<i>`` and times
    shifted by ``i`` source spans. Trials, runs and batches are copied; sweeps
    once. Returns the number of trials written.
    """
    out = Path(out)
    if out.exists():
        out.unlink()
    Store(out).close()  # the project's schema
    db = sqlite3.connect(out, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("ATTACH DATABASE ? AS src", (f"{Path(source).resolve().as_uri()}?mode=ro",))
        span = _span_seconds(db)
        have = {r[1] for r in db.execute("PRAGMA src.table_info(trials)")}
        trial_cols = [c for c in TRIAL_COLUMNS if c in have]
        run_cols = [r[1] for r in db.execute("PRAGMA src.table_info(runs)")]
        batch_cols = [r[1] for r in db.execute("PRAGMA src.table_info(batches)")]

        def select(columns: list[str], times: tuple[str, ...]) -> str:
            parts = []
            for c in columns:
                if c == "run_id":
                    parts.append("run_id || :suffix")
                elif c in times:
                    parts.append(_shifted(c))
                else:
                    parts.append(c)
            return ", ".join(parts)

        db.execute("BEGIN")
        db.execute("INSERT OR IGNORE INTO sweeps SELECT * FROM src.sweeps")
        for i in copies:
            args = {"suffix": f"-x{i:05d}" if i else "", "shift": f"+{i * span}"}
            db.execute(
                f"INSERT INTO trials ({', '.join(trial_cols)}) "
                f"SELECT {select(trial_cols, ('started_at',))} FROM src.trials",
                args,
            )
            db.execute(
                f"INSERT INTO runs ({', '.join(run_cols)}) "
                f"SELECT {select(run_cols, ('started_at', 'finished_at'))} FROM src.runs",
                args,
            )
            if batch_cols:
                db.execute(
                    f"INSERT INTO batches ({', '.join(batch_cols)}) "
                    f"SELECT {select(batch_cols, ('recorded_at',))} FROM src.batches",
                    args,
                )
        db.execute("COMMIT")
        return db.execute("SELECT count(*) FROM trials").fetchone()[0]
    finally:
        db.close()


def copies_for(source: str | Path, trials: int) -> int:
    """How many copies of ``source`` reach at least ``trials`` trials."""
    with contextlib.closing(
        sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    ) as db:
        per_copy = db.execute("SELECT count(*) FROM trials").fetchone()[0]
    return max(1, math.ceil(trials / per_copy))


@dataclass(frozen=True)
class SyntheticStores:
    whole: Path
    half_a: Path  # even copies
    half_b: Path  # odd copies
    trials: int


def synthetic_stores(source: Path, size: str, workdir: Path) -> SyntheticStores:
    """The whole store and its two halves for one size, built once and reused."""
    copies = copies_for(source, SIZES[size])
    workdir = workdir.resolve()  # the steps run elsewhere
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = f"{source.stat().st_size}-{int(source.stat().st_mtime)}-{copies}"
    whole, a, b = (workdir / f"trials-{size}{part}.sqlite" for part in ("", "-a", "-b"))
    marker = workdir / f"trials-{size}.built"
    if not (marker.is_file() and marker.read_text() == stamp and whole.is_file()):
        print(f"building the {size} stores ({copies} copies of {source.name}) …", file=sys.stderr)
        build_store(source, whole, range(copies))
        build_store(source, a, range(0, copies, 2))
        build_store(source, b, range(1, copies, 2))
        marker.write_text(stamp)
    with contextlib.closing(sqlite3.connect(whole)) as db:
        trials = db.execute("SELECT count(*) FROM trials").fetchone()[0]
    return SyntheticStores(whole, a, b, trials)


def largest_sweep(store: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT sweep_id FROM trials WHERE sweep_id IS NOT NULL "
            "GROUP BY sweep_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    return row[0] if row else ""


# running steps ------------------------------------------------------------------
#: packages this change brought in: a revision whose pyproject.toml does not ask for them
#: runs without them, as it did when it was current (with pyarrow merely installed, pandas
#: holds every string column in Arrow, and the per-row code of older revisions slows down
#: many times over)
NEW_PACKAGES = ("pyarrow", "adbc_driver_manager", "adbc_driver_sqlite")


def hidden_for(ref: str | None, repo: Path) -> tuple[str, ...]:
    """The packages to hide from ``ref``'s code: those its pyproject.toml does not name."""
    if ref is None:
        return ()
    pyproject = subprocess.run(
        ["git", "-C", str(repo), "show", f"{ref}:pyproject.toml"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(p for p in NEW_PACKAGES if p.split("_")[0] not in pyproject.replace("-", "_"))


@contextlib.contextmanager
def code_at(ref: str | None, repo: Path) -> Iterator[Path]:
    """The project's code at ``ref`` (None: this checkout), for ``PYTHONPATH``."""
    if ref is None:
        yield repo
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", ref, "repro_lib"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_step(
    step: str, code_root: Path, stores: SyntheticStores, sweep: str, hidden: Sequence[str] = ()
) -> tuple[float, float, int]:
    """Run one step in a fresh interpreter; (wall seconds, CPU seconds, peak RSS in bytes)."""
    imports, code = _STEP_CODE[step]
    child = _CHILD.format(imports=imports, code=code)
    with tempfile.TemporaryDirectory(prefix="bench-analysis-out-") as out:
        env = dict(os.environ, PYTHONPATH=str(code_root), MPLBACKEND="Agg")
        env["REPRO_LIB_HOME"] = out  # reports find no runs directory of the user's
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                child,
                str(stores.whole),
                out,
                sweep,
                str(stores.half_a),
                str(stores.half_b),
                str(code_root),
                ",".join(hidden),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=out,  # not the checkout: `python -c` puts the working directory first on sys.path
        )
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["cpu_seconds"], int(result["peak_bytes"])


def measure(
    sizes: Sequence[str],
    *,
    source: Path,
    workdir: Path,
    against: str | None = None,
    repeat: int = 1,
    steps: Sequence[str] = STEPS,
    repo: Path | None = None,
) -> list[Measurement]:
    repo = repo or Path(__file__).resolve().parent.parent
    results: list[Measurement] = []
    codes: list[str | None] = [None] + ([against] if against else [])
    with contextlib.ExitStack() as stack:
        roots = {ref: stack.enter_context(code_at(ref, repo)) for ref in codes}
        hidden = {ref: hidden_for(ref, repo) for ref in codes}
        for size in sizes:
            stores = synthetic_stores(source, size, workdir)
            sweep = largest_sweep(stores.whole)
            for step in steps:
                for ref in codes:
                    runs = [
                        run_step(step, roots[ref], stores, sweep, hidden[ref])
                        for _ in range(repeat)
                    ]
                    m = Measurement(
                        size,
                        stores.trials,
                        step,
                        ref or "this",
                        statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs),
                        int(statistics.median(r[2] for r in runs)),
                    )
                    results.append(m)
                    print(
                        f"{size:>5} {step:<15} {m.code:<10} {m.seconds:8.2f} s "
                        f"(CPU {m.cpu_seconds:.2f} s) {m.peak_bytes / 2**20:8.0f} MiB",
                        file=sys.stderr,
                    )
    return results


def table(results: Sequence[Measurement], against: str | None) -> str:
    """A Markdown table: one row per size and step, with the ratios to ``against``."""
    head = ["size (trials)", "step", "time", "CPU time", "peak RSS"]
    if against:
        head += [f"time at `{against}`", f"peak RSS at `{against}`", "speed-up", "memory ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for m in (m for m in results if m.code == "this"):
        row = [
            f"{m.size} ({m.trials:,})",
            f"`{m.step}`",
            f"{m.seconds:.2f} s",
            f"{m.cpu_seconds:.2f} s",
            _mib(m.peak_bytes),
        ]
        if against:
            old = next(
                (o for o in results if o.code == against and (o.size, o.step) == (m.size, m.step)),
                None,
            )
            if old is None:
                row += ["–"] * 4
            else:
                row += [
                    f"{old.seconds:.2f} s",
                    _mib(old.peak_bytes),
                    f"{old.seconds / m.seconds:.1f}×",
                    f"{m.peak_bytes / old.peak_bytes:.2f}",
                ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-analysis",
        description="Time and peak memory of load_results, report and merge on synthetic stores.",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help=f"comma-separated sizes out of {', '.join(SIZES)} (default: %(default)s; 1m takes minutes and GBs)",
    )
    parser.add_argument(
        "--against", default=None, metavar="REF", help="also run a git revision's code (e.g. main)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per step; the median is shown")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help="comma-separated steps (default: all)"
    )
    parser.add_argument(
        "--source", default=None, help="store to copy (default: the findings dataset)"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the stores are kept (default: data/processed/bench-analysis)",
    )
    args = parser.parse_args(argv)
    paths = Paths.from_env()
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES] + [s for s in steps if s not in STEPS]
    if bad or args.repeat < 1:
        print(
            f"bench-analysis: unknown size or step {', '.join(bad) or '--repeat < 1'}; "
            f"sizes: {', '.join(SIZES)}; steps: {', '.join(STEPS)}",
            file=sys.stderr,
        )
        return 2
    source = Path(args.source) if args.source else paths.findings_store
    if not source.is_file():
        print(f"bench-analysis: no store at {source}; pass --source", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else paths.processed / "bench-analysis"
    results = measure(
        sizes, source=source, workdir=workdir, against=args.against, repeat=args.repeat, steps=steps
    )
    print(table(results, args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
