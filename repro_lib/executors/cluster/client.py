"""The client side: :class:`DaskExecutor`, the only writer of the sweep's store.

It asks the scheduler for its workers, checks every host, submits one task per
cell (:func:`~.worker.run_cell_task`), drains the records the cells put on the
sweep's ``Queue`` into the store, and holds the lease that keeps its cells
running (:mod:`.lease`). :func:`open_cluster` and :func:`close_cluster` give
notebooks and the benchmark a ``distributed.Client``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import docker

from ... import lab
from ...config import Paths
from ...errors import InfraError, MissingRequirement, ReproError, UsageError
from ...progress import SweepProgress
from ...records import TrialRecord
from ...store import Store
from .. import SweepJob
from ..lanes import LaneEngines
from .bundles import unpack_bundle
from .done import Done, DoneList, done_list_name
from .lease import Lease, dask_distributed, live_leases, owner_name, peek
from .worker import (
    check_host,
    close_sessions,
    run_cell_task,
    running_cells,
    set_docker_host,
    set_host_name,
    worker_bundle,
    worker_rows,
)

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler
WORKER_WAIT = 60  # seconds to wait for the first worker to join
LANES = "lanes"  # the worker resource that counts a host's lanes
ORPHAN_WAIT = 900  # seconds a resume waits for the cells of a dead client to stop


class DaskExecutor:
    """Runs cells as Dask tasks; see the module docstring for how records travel."""

    name = "dask"

    def __init__(
        self,
        dask_client: Any,
        *,
        owns_client: bool,
        local_cluster: Any = None,
        docker_client: docker.DockerClient | None = None,
        paths: Paths | None = None,
    ) -> None:
        self.dask = dask_client
        self.owns_client = owns_client
        self.local_cluster = local_cluster
        self.docker_client = docker_client
        self.paths = paths or Paths.from_env()
        self._stack = contextlib.ExitStack()
        self._members: dict[str, dict[str, Any]] | None = None  # see _workers

    @classmethod
    def connect(
        cls,
        cluster: Any,
        *,
        lanes: int,
        client: docker.DockerClient | None = None,
        paths: Paths | None = None,
    ) -> DaskExecutor:
        """``"local"``, a scheduler address, or a ``distributed.Client``.

        Raises:
            InfraError: the scheduler cannot be reached.
            MissingRequirement: Dask is not installed.
        """
        distributed = dask_distributed()
        owns = not isinstance(cluster, distributed.Client)
        dask_client = open_cluster(cluster, lanes=lanes) if owns else cluster
        local = (
            dask_client.cluster
            if isinstance(getattr(dask_client, "cluster", None), distributed.LocalCluster)
            else None
        )
        return cls(
            dask_client, owns_client=owns, local_cluster=local, docker_client=client, paths=paths
        )

    @property
    def dashboard_link(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.dask.dashboard_link
        return None

    # the Executor interface ---------------------------------------------------
    def _workers(self) -> dict[str, dict[str, Any]]:
        """The scheduler's workers, asked once per run of the cells and kept.

        Every use before the cells run (settle, gather, prepare, slots, the lanes
        resource) reads the same answer; :meth:`run` forgets it at its end, since
        workers may die or join while cells run, so the gather after it waits
        again for a worker to ask for what hosts kept.
        """
        if self._members is None:
            try:
                self.dask.wait_for_workers(1, timeout=WORKER_WAIT)
            except (TimeoutError, OSError):
                raise InfraError(
                    f"no Dask worker joined the scheduler within {WORKER_WAIT} s",
                    hint=f"start workers on Docker hosts: dask worker {self.dask.scheduler.address} --resources {LANES}=2",
                ) from None
            self._members = dict(self.dask.scheduler_info(n_workers=-1)["workers"])
        return self._members

    def _uses_lanes(self) -> bool:
        return any(LANES in (w.get("resources") or {}) for w in self._workers().values())

    def slots(self, job: SweepJob) -> int:
        workers = self._workers().values()
        if self._uses_lanes():
            total = sum(int((w.get("resources") or {}).get(LANES, 0)) for w in workers)
        else:
            total = sum(int(w.get("nthreads", 1)) for w in workers)
        return max(1, min(total, len(job.cells) or 1))

    def prepare(self, job: SweepJob) -> None:
        workers = self._workers()
        if self.local_cluster is not None:
            # local workers share this machine's name; records tell them apart by worker
            for i, address in enumerate(sorted(workers)):
                self.dask.run(set_host_name, f"{lab.host_name()}-w{i}", workers=[address])
            if job.plan.backend != "container" and len(workers) > 1:
                self._private_engines_for_local_workers(job, sorted(workers))
        offline = bool(job.plan.batch.get("offline"))
        checks = self.dask.run(check_host, job.images)
        for address, result in sorted(checks.items()):
            if result["error"]:
                raise InfraError(
                    f"host {result['host']} ({address}): {result['error']}",
                    hint="start its Docker engine or fix the worker's DOCKER_HOST",
                )
            if offline and result["missing"]:
                raise MissingRequirement(
                    f"host {result['host']} ({address}) lacks image {result['missing'][0]} (offline)"
                    + (
                        f" and {len(result['missing']) - 1} more"
                        if len(result["missing"]) > 1
                        else ""
                    ),
                    hint="`docker load` it on that host, or drop --offline so it can pull",
                )

    def _private_engines_for_local_workers(self, job: SweepJob, addresses: list[str]) -> None:
        """Engine backend on a LocalCluster: a reset prunes a whole engine, so each
        local worker gets a private engine, as local lanes do."""
        if self.docker_client is None:
            raise UsageError("--cluster local with the engine backend needs a local Docker engine")
        engines = self._stack.enter_context(
            LaneEngines(self.docker_client, self.paths, job.sweep_id, len(addresses), job.images)
        )
        for address, host in zip(addresses, engines.hosts, strict=True):
            self.dask.run(set_docker_host, host, workers=[address])

    def gather(self, sweep_id: str, store: Store, *, bundles: Path | None = None) -> int:
        self._workers()
        added = 0
        for result in self.dask.run(worker_rows, sweep_id).values():
            for run in result["runs"]:
                store.start_run(
                    run["run_id"], run["params"], sweep_id=run["sweep_id"], cell=run["cell"]
                )
                recorded = store.run(run["run_id"]) or {}
                if run["summary"] and not recorded.get("summary"):
                    store.finish_run(run["run_id"], run["status"], run["summary"])
            for row in result["trials"]:
                record = TrialRecord.from_row(row)
                added += store.append_once(record)
                if bundles is not None and record.evidence_path:
                    self._fetch_bundle(record, bundles / record.run_id)
        return added

    def _fetch_bundle(self, record: TrialRecord, run_dir: Path) -> None:
        """Copy a failure's bundle that a worker kept but never sent (its client had died)."""
        if (run_dir / record.evidence_path).is_dir():
            return
        found = self.dask.run(worker_bundle, record.run_id, record.evidence_path, record.host)
        data = next((d for d in found.values() if d), None)
        if data:
            with contextlib.suppress(OSError, tarfile.TarError):  # the record stands alone
                unpack_bundle(data, run_dir, record.evidence_path)

    def settle(self, run_ids: list[str]) -> None:
        """Stop, and wait for, cells of these runs that an earlier client left running.

        Raises:
            UsageError: their client is alive (another sweep of these cells runs).
            InfraError: they still run after ``ORPHAN_WAIT`` seconds.
        """
        running = self._running(run_ids)
        if not running:
            return
        tags = sorted({c["tag"] for c in running})
        alive = live_leases(self.dask, tags)
        where = ", ".join(sorted({f"{c['run_id']} on {c['host']}" for c in running}))
        if alive:
            raise UsageError(
                f"another client is running these cells now: {where}",
                hint="let it finish or stop it (Ctrl-C), then resume",
            )
        distributed = dask_distributed()
        for tag in tags:
            distributed.Event(f"{tag}-stop", client=self.dask).set()
        print(
            f"repro-lib: waiting for cells of a dead client to stop after their try: {where}",
            file=sys.stderr,
        )
        deadline = time.monotonic() + ORPHAN_WAIT
        while running:
            if time.monotonic() > deadline:
                raise InfraError(
                    f"cells of a dead client still run after {ORPHAN_WAIT} s: {where}",
                    hint="stop those workers (their records stay in their stores), then resume",
                )
            time.sleep(0.5)
            running = self._running(run_ids)

    def _running(self, run_ids: list[str]) -> list[dict[str, str]]:
        self._workers()
        return [c for cells in self.dask.run(running_cells, run_ids).values() for c in cells]

    def run(self, job: SweepJob, progress: SweepProgress) -> None:
        distributed = dask_distributed()
        tag = f"repro-lib-{job.sweep_id}-{secrets.token_hex(3)}"
        queue = distributed.Queue(tag, client=self.dask)
        stop = distributed.Event(f"{tag}-stop", client=self.dask)
        resources = {LANES: 1} if self._uses_lanes() else None
        futures: dict[Any, str] = {}
        variables = []
        done_lists = []
        owners = []
        lease = Lease(self.dask, tag)
        lines = _Lines(progress, job.paths.run_dir(job.session_id))
        pending: set[Any] = set()
        try:
            for cell in job.cells:
                run_id = cell.run_id(job.sweep_id)
                done = DoneList(done_list_name(tag, run_id), client=self.dask)
                done.extend([Done(r.trial, r.outcome) for r in job.prior[cell.index]])
                done_lists.append(done)
                attempts = distributed.Variable(f"{tag}-{run_id}-attempt", client=self.dask)
                # a resume is one more attempt at a cell, whoever made the earlier ones
                attempts.set(max((r.attempt for r in job.prior[cell.index]), default=0))
                variables.append(attempts)
                owner = distributed.Variable(owner_name(run_id), client=self.dask)
                owner.set(tag)  # the cells of an earlier client of this sweep stop on seeing it
                owners.append(owner)
                spec = {
                    "tag": tag,
                    "plan": job.plan.as_dict(),
                    "cell": asdict(cell),
                    "sweep_id": job.sweep_id,
                    "session_id": job.session_id,
                    "command": job.command,
                    "tags": list(job.tags),
                }
                future = self.dask.submit(
                    run_cell_task, spec, key=f"{tag}-{run_id}", resources=resources, pure=False
                )
                futures[future] = cell.key()
                pending.add(future)
            with Store(job.store_path) as store:
                while pending:
                    _drain(queue, store, lines)
                    finished = {f for f in pending if f.done()}
                    pending -= finished
                    for future in finished:
                        if future.status != "finished":
                            _drain(queue, store, lines)
                            raise _task_error(future, futures[future])
                    if not finished:
                        time.sleep(0.1)
                _drain(queue, store, lines)
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            with contextlib.suppress(Exception), Store(job.store_path) as store:
                deadline = time.monotonic() + 30  # running cells stop after their try
                while any(not f.done() for f in pending) and time.monotonic() < deadline:
                    _drain(queue, store, lines)
                    time.sleep(0.2)
                _drain(queue, store, lines)
            raise
        finally:
            with contextlib.suppress(Exception):
                self.dask.run(close_sessions, job.session_id)
            for v in variables:
                with contextlib.suppress(Exception):
                    v.delete()
            for done in done_lists:
                with contextlib.suppress(Exception):
                    done.delete()
            for owner in owners:  # unless a later client of the sweep took the cell over
                with contextlib.suppress(Exception):
                    if peek(owner) == tag:
                        owner.delete()
            lease.end()
            with contextlib.suppress(Exception):
                queue.close()
            self._members = None  # workers may have died or joined while the cells ran

    def close(self) -> None:
        self._stack.close()
        if self.owns_client:
            close_cluster(self.dask)


def open_cluster(cluster: str, *, lanes: int = 2) -> Any:
    """A ``distributed.Client``: ``"local"`` starts a LocalCluster of ``lanes`` worker
    processes on 127.0.0.1 (one lane each); anything else is a scheduler address.

    Notebooks call this to show ``client.dashboard_link`` and pass the client on.

    Raises:
        InfraError: the scheduler cannot be reached.
        MissingRequirement: Dask is not installed.
    """
    distributed = dask_distributed()
    if cluster == "local":
        local = distributed.LocalCluster(
            n_workers=lanes,
            threads_per_worker=1,
            processes=True,
            resources={LANES: 1},
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        return distributed.Client(local)
    address = str(cluster)
    if "://" not in address:
        address = f"tcp://{address}"
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise InfraError(
            f"cannot reach the Dask scheduler at {address}: {str(exc).splitlines()[0]}",
            hint="start it with `dask scheduler`, or check --cluster (tls:// needs Dask's TLS settings)",
        ) from None


def close_cluster(dask_client: Any) -> None:
    """Close a client from :func:`open_cluster`, and the LocalCluster it started, if any."""
    local = getattr(dask_client, "cluster", None)
    with contextlib.suppress(Exception):
        dask_client.close()
    if local is not None:
        with contextlib.suppress(Exception):
            local.close()


def _task_error(future: Any, cell: str) -> BaseException:
    exc = future.exception()
    if isinstance(exc, ReproError | KeyboardInterrupt):
        return exc
    name = type(exc).__name__
    if name == "KilledWorker":
        return InfraError(
            f"cell {cell}: the workers running it died repeatedly",
            hint="check the workers' logs and engines; recorded trials are kept, --resume finishes",
        )
    return InfraError(f"cell {cell} failed on its worker: {name}: {exc}")


class _Lines:
    """One progress line per running cell, showing the host it runs on; where the
    evidence bundles that come with records go."""

    def __init__(self, progress: SweepProgress, run_dirs: Path) -> None:
        self.progress = progress
        self.run_dirs = run_dirs
        self.by_run: dict[str, int] = {}

    def line(self, run_id: str) -> int:
        if run_id not in self.by_run:
            used = set(self.by_run.values())
            free = [i for i in range(len(self.progress.lanes)) if i not in used]
            self.by_run[run_id] = free[0] if free else 0
        return self.by_run[run_id]

    def release(self, run_id: str) -> None:
        self.by_run.pop(run_id, None)


def _drain(queue: Any, store: Store, lines: _Lines) -> None:
    for event in queue.get(batch=True):
        kind = event["kind"]
        if kind == "trial":
            record = TrialRecord.from_row(event["row"])
            if store.append_once(record):
                lines.progress.record(lines.line(record.run_id), record)
        elif kind == "run":
            store.start_run(
                event["run_id"], event["params"], sweep_id=event["sweep_id"], cell=event["cell"]
            )
        elif kind == "finish":
            store.finish_run(event["run_id"], event["status"], event["summary"])
            lines.release(event["run_id"])
        elif kind == "tag":
            store.tag_run(event["run_id"], shard=event["shard"], plan_digest=event["plan_digest"])
        elif kind == "started":
            lines.progress.lane(
                lines.line(event["run_id"]),
                event["cell"],
                event["done"],
                event["total"],
                host=event["host"],
            )
        elif kind == "skipped":
            lines.progress.skip(event["n"])
        elif kind == "bundle":
            with contextlib.suppress(OSError, tarfile.TarError):  # the record stands alone
                unpack_bundle(event["data"], lines.run_dirs / event["run_id"], event["path"])
