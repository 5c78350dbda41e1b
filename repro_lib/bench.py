"""Throughput benchmark: trials per minute of the public script's procedure vs the lab's modes.

Every configuration runs in one process on the same machine, one after the
other, with the same scenario, reset frequency and number of tries, and its
wall time includes everything a user waits for (registries, cache export,
resets). Ratios are to the baseline measured in the same run:

* container backend: the public script's procedure (``daemonless``, one
  ``buildctl-daemonless.sh`` container per try, one lane) vs ``daemon`` mode
  (one ``buildkitd`` per reset cycle) vs N lanes of each;
* engine backend: one lane vs N lanes (each lane its own private engine);
* with ``cluster``: the N-lane configuration again as cells on a Dask cluster
  (``local``: N worker processes here), with tries per minute per worker.

Each row also carries its failure rate with an interval that treats reset
cycles as clusters, and a test against the baseline (batch- or cycle-robust,
``stats.compare``), so a speed-up that stops reproducing the bug shows.
Every configuration runs at least three replicate batches: the rate check
pools them only after testing that they agree (one odd batch must not pass for
a mode's effect), and says so.

CPU accounting is whole-machine: the busy time of ``/proc/stat`` (user, nice,
system, irq, softirq, steal) over each configuration's own window, divided by
its tries. The CPU ceiling is ``cores × 60 ÷ CPU-s per try`` tries per minute,
what the machine could do if every core were busy with this configuration; the
fraction reached is the machine's utilisation during that window. Anything
else running on the machine is counted too, so measure on a quiet machine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import pandas as pd

from . import stats
from .config import Paths
from .executors.cluster import close_cluster, open_cluster
from .plan import Plan
from .records import evidence
from .results import derive
from .store import Store
from .sweep import run_sweep

MIN_BATCHES = 3  # replicate batches per configuration, so a rate check can test agreement
PHASES = (
    "reset",
    "container_start",
    "daemon_start",
    "cache_import",
    "build",
    "export",
    "copy_out",
    "verify",
)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    mode: str
    lanes: int
    cluster: str | None = None


@dataclass
class BenchRow:
    name: str
    sweep_id: str
    trials: int
    wall_s: float
    per_minute: float
    ratio: float
    failures: int
    counted: int
    rate: float | None
    ci_low: float
    ci_high: float
    pvalue_vs_baseline: float | None
    phases: dict[str, float] = field(default_factory=dict)
    per_host: dict[str, float] = field(default_factory=dict)  # tries/min of each host (cluster)
    cpu_s_per_try: float | None = None
    ceiling_per_minute: float | None = None
    ceiling_fraction: float | None = None
    batches: int = 0
    batches_agree_p: float | None = None  # heterogeneity of failure rates across its batches
    cpu_split: dict[str, float] = field(default_factory=dict)  # CPU-s per try by component


def configurations(backend: str, lanes: int, cluster: str | None = None) -> list[BenchConfig]:
    configs = _local_configurations(backend, lanes)
    if cluster:
        fastest = configs[-1]
        where = f"{lanes} local workers" if cluster == "local" else f"cluster {cluster}"
        configs.append(
            BenchConfig(f"{fastest.mode}, Dask: {where}", fastest.mode, lanes, cluster=cluster)
        )
    return configs


def _local_configurations(backend: str, lanes: int) -> list[BenchConfig]:
    if backend == "container":
        configs = [
            BenchConfig("baseline: daemonless, 1 lane (public script)", "daemonless", 1),
            BenchConfig("daemon, 1 lane", "daemon", 1),
        ]
        if lanes > 1:
            configs += [
                BenchConfig(f"daemonless, {lanes} lanes", "daemonless", lanes),
                BenchConfig(f"daemon, {lanes} lanes", "daemon", lanes),
            ]
        return configs
    configs = [BenchConfig("baseline: 1 lane", "daemonless", 1)]
    if lanes > 1:
        configs.append(BenchConfig(f"{lanes} lanes (a private engine each)", "daemonless", lanes))
    return configs


def run_bench(
    client: docker.DockerClient,
    *,
    backend: str,
    versions: list[str],
    tries: int,
    reset_freq: int,
    lanes: int,
    batch: dict[str, Any],
    store_path: str | Path,
    paths: Paths | None = None,
    progress: bool = True,
    cluster: Any = None,
) -> list[BenchRow]:
    """Run every configuration once and return one row each, the baseline first."""
    rows: list[BenchRow] = []
    baseline: BenchRow | None = None
    baseline_frame = pd.DataFrame()
    for config in configurations(backend, lanes, cluster):
        # at least three batches, a whole number per lane so lanes stay balanced
        replicates = config.lanes * -(-MIN_BATCHES // config.lanes)
        plan = Plan(
            versions=list(versions),
            reset_freq=[reset_freq],
            cache=[batch.pop("cache")]
            if "cache" in batch
            else (["registry"] if backend == "container" else ["inline"]),
            mode=[config.mode],
            backend=backend,
            tries=-(-tries // replicates),  # at least --tries in all
            lanes=config.lanes,
            replicates=replicates,
            batch=dict(batch),
        )
        with _cluster_client(config.cluster, config.lanes) as dask_client:
            # a cluster is started once and serves many sweeps: its start-up is not throughput
            parts_before = cpu_components()
            cpu_before = parts_before["machine"]
            started = time.monotonic()
            outcome = run_sweep(
                client,
                plan,
                store_path=store_path,
                paths=paths,
                progress=progress,
                command=f"repro-lib bench ({config.name})",
                cluster=dask_client,
            )
            wall = time.monotonic() - started
            parts_after = cpu_components()
            cpu = parts_after["machine"] - cpu_before
        with Store(store_path) as store:
            records = [r for c in plan.cells() for r in store.trials(c.run_id(outcome.sweep_id))]
        k, counted = evidence(records)
        frame = stats.records_frame(records)
        rate = stats.cycle_rate(frame)  # reset cycles as clusters
        per_minute = 60.0 * len(records) / wall if wall else 0.0
        phases = {
            p: round(sum(r.phases.get(p, 0.0) for r in records) / len(records), 4)
            for p in PHASES
            if records and any(p in r.phases for r in records)
        }
        per_host = {
            host: round(60.0 * sum(r.host == host for r in records) / wall, 2)
            for host in sorted({r.host for r in records})
        }
        cpu_per_try = cpu / len(records) if records and cpu > 0 else None
        ceiling = (os.cpu_count() or 1) * 60.0 / cpu_per_try if cpu_per_try else None
        agreement = (
            stats.group_agreement(
                derive(pd.DataFrame([r.to_row() for r in records])).assign(cell="all"), by="run_id"
            )
            if records
            else []
        )
        row = BenchRow(
            name=config.name,
            sweep_id=outcome.sweep_id,
            trials=len(records),
            wall_s=round(wall, 2),
            per_minute=round(per_minute, 2),
            ratio=1.0,
            failures=k,
            counted=counted,
            rate=rate.p_hat if counted else None,
            ci_low=rate.ci_low,
            ci_high=rate.ci_high,
            pvalue_vs_baseline=None,
            phases=phases,
            per_host=per_host if config.cluster else {},
            cpu_s_per_try=round(cpu_per_try, 4) if cpu_per_try else None,
            ceiling_per_minute=round(ceiling, 1) if ceiling else None,
            ceiling_fraction=round(per_minute / ceiling, 3) if ceiling else None,
            batches=len(plan.cells()),
            cpu_split=_split(parts_before, parts_after, len(records)),
            batches_agree_p=agreement[0].pvalue if agreement else None,
        )
        if baseline is None:
            baseline, baseline_frame = row, frame
        else:
            row.ratio = round(per_minute / baseline.per_minute, 2) if baseline.per_minute else 0.0
            if counted and baseline.counted:
                # cycle- or batch-robust when the tries cluster (stats.compare)
                row.pvalue_vs_baseline = stats.compare(frame, baseline_frame).pvalue
        rows.append(row)
    return rows


ENGINE_DAEMONS = ("dockerd", "containerd")


def cpu_components() -> dict[str, float]:
    """CPU seconds so far of the parts of a try that can be told apart from outside.

    ``lab`` is this process and the children it waited for (``buildctl``, the
    docker CLI); ``engine`` the Docker and containerd daemons; whatever else the
    machine did (BuildKit in its containers, runc, shims, registries) is the
    whole-machine busy time minus these two.
    """
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    engine = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in ENGINE_DAEMONS:
            fields = text[text.rindex(")") + 2 :].split()
            engine += (int(fields[11]) + int(fields[12])) / tick
    return {
        "machine": busy_cpu_seconds(),
        "lab": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "engine": engine,
    }


def _split(before: dict[str, float], after: dict[str, float], tries: int) -> dict[str, float]:
    """CPU seconds per try by component (see ``cpu_components``)."""
    if not tries:
        return {}
    delta = {k: max(0.0, after[k] - before[k]) for k in before}
    rest = max(0.0, delta["machine"] - delta["lab"] - delta["engine"])
    return {
        "lab process and its children": round(delta["lab"] / tries, 4),
        "dockerd + containerd": round(delta["engine"] / tries, 4),
        "containers (BuildKit, runc, registries) and the rest": round(rest / tries, 4),
    }


def busy_cpu_seconds() -> float:
    """Whole-machine busy CPU seconds since boot, from ``/proc/stat`` (0 where absent)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _cluster_client(cluster: str | None, lanes: int) -> Iterator[Any]:
    if cluster is None:
        yield None
        return
    dask_client = open_cluster(cluster, lanes=lanes)
    # a long-lived cluster has imported the lab already; a fresh one must not bill it to throughput
    dask_client.wait_for_workers(1, timeout=60)
    dask_client.run(_import_lab)
    try:
        yield dask_client
    finally:
        close_cluster(dask_client)


def _import_lab() -> bool:
    # why: runs on each Dask worker, to load the lab there before the clock starts
    import repro_lib.executors.cluster  # noqa: F401
    import repro_lib.sweep  # noqa: F401

    return True


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(rows: list[BenchRow], *, header: str = "") -> str:
    """The result as a Markdown table (what the README quotes)."""
    lines = [header] if header else []
    lines += [
        "| configuration | tries | wall s | tries/min | × baseline | CPU-s/try | ceiling/min | of ceiling | failures | rate (95% CI) | batches agree p | p vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        p = "—" if r.pvalue_vs_baseline is None else f"{r.pvalue_vs_baseline:.2f}"
        agree = "—" if r.batches_agree_p is None else f"{r.batches_agree_p:.2f} ({r.batches})"
        cpu = "—" if r.cpu_s_per_try is None else f"{r.cpu_s_per_try:.3f}"
        ceiling = "—" if r.ceiling_per_minute is None else f"{r.ceiling_per_minute:.0f}"
        frac = "—" if r.ceiling_fraction is None else f"{100 * r.ceiling_fraction:.0f}%"
        lines.append(
            f"| {r.name} | {r.trials} | {r.wall_s:.1f} | {r.per_minute:.1f} | {r.ratio:.2f} | "
            f"{cpu} | {ceiling} | {frac} | "
            f"{r.failures}/{r.counted} | {_pct(r.rate)} ({_pct(r.ci_low)}–{_pct(r.ci_high)}) | "
            f"{agree} | {p} |"
        )
    lines += [
        "",
        "CPU: whole-machine busy time from /proc/stat over each configuration's window; "
        "ceiling = cores × 60 ÷ CPU-s per try. Rates pool a configuration's batches; "
        "'batches agree p' tests them against each other on reset cycles with a failure "
        "(Fisher for two, chi-square for more) before that pooling is trusted; the interval "
        "and 'p vs baseline' treat batches (or, with one batch, reset cycles) as clusters.",
    ]
    for r in rows:
        if r.per_host:
            lines += ["", f"Tries per minute per worker ({r.name}):", ""]
            lines += [f"- {host}: {rate:.1f}" for host, rate in r.per_host.items()]
            lines.append(f"- total: {r.per_minute:.1f}")
    parts = list(next((r.cpu_split for r in rows if r.cpu_split), {}))
    lines += _per_try_table("CPU seconds per try, by component:", rows, parts, "cpu_split")
    phases = [p for p in PHASES if any(p in r.phases for r in rows)]
    lines += _per_try_table("Mean seconds per try:", rows, phases, "phases")
    return "\n".join(lines)


def _per_try_table(title: str, rows: list[BenchRow], keys: list[str], field_name: str) -> list[str]:
    if not keys:
        return []
    lines = ["", title, "", "| configuration | " + " | ".join(keys) + " |"]
    lines.append("|---|" + "---:|" * len(keys))
    for r in rows:
        values = getattr(r, field_name)
        lines.append(
            f"| {r.name} | " + " | ".join(f"{values.get(k, 0.0):.3f}" for k in keys) + " |"
        )
    return lines


def as_dicts(rows: list[BenchRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
