"""Dask distributed executor: cells run on a cluster of Docker hosts.

Each Dask worker sits on a machine with a Docker engine (its local socket, or
the worker's ``DOCKER_HOST``) and runs whole cells there, with its own
registries, mirror and BuildKit state: no Docker object spans hosts. Lanes per
host are the worker resource ``lanes`` (``dask worker … --resources lanes=2``);
each cell task asks for one.

Records travel, nothing else: a worker appends each record to a store of its
own (``data/raw/worker-<host>.sqlite`` on that host) and puts it on a Dask
``Queue``; the client drains the queue and is the only writer of the sweep's
store, writing each ``(run_id, trial)`` once. When a worker dies mid-cell, Dask
reruns the cell elsewhere; the rerun reads which trials are already done from a
Dask ``Variable`` the workers keep current, so it runs only the missing ones
and records its ``attempt``.

A cell runs only while its client wants it. The client renews a lease (a Dask
``Variable`` it rewrites every ``LEASE_RENEW`` seconds) and names itself the owner
of each of its cells (one ``Variable`` per run id). Before each try a cell checks
its sweep's stop ``Event``, that it is still the owner, and that the lease moved
within ``LEASE_TIMEOUT`` seconds; otherwise it stops after the try in flight. So
after a client crash its cells stop by themselves, and ``repro-lib sweep
--resume`` first stops and waits for any that still run (refusing if their client
is alive), then gathers what the workers' own stores hold, runs the rest, and
gathers again. A failure's evidence bundle travels with its record, up to
``BUNDLE_CAP`` bytes of files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
import sys
import tarfile
import threading
import time
from collections import namedtuple
from dataclasses import asdict
from pathlib import Path
from typing import Any

import docker

from .. import lab
from ..batch import BatchOptions, LabSession
from ..builders import backend_class, supports
from ..config import Paths
from ..errors import InfraError, MissingRequirement, ReproError, UsageError
from ..plan import Cell, Plan, stop_rule
from ..progress import SweepProgress
from ..records import Outcome, TrialRecord
from ..scenario import load_scenario
from ..store import Store
from . import SweepJob, run_cell
from .lanes import LaneEngines

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler
WORKER_WAIT = 60  # seconds to wait for the first worker to join
LANES = "lanes"  # the worker resource that counts a host's lanes
LEASE_RENEW = 1.0  # seconds between two renewals of a client's lease
LEASE_TIMEOUT = 10.0  # a cell whose client renewed no lease for this long stops
LEASE_PROBE = 3 * LEASE_RENEW  # how long a resume watches an earlier client's lease
ORPHAN_WAIT = 900  # seconds a resume waits for the cells of a dead client to stop
#: bytes of files per evidence bundle sent to the client; larger files stay on the host
BUNDLE_CAP = 16 * 2**20


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise MissingRequirement(
            "Dask distributed is not installed", hint="pip install 'repro-lib[cluster]'"
        ) from None
    return distributed


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
        distributed = _distributed()
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
        try:
            self.dask.wait_for_workers(1, timeout=WORKER_WAIT)
        except (TimeoutError, OSError):
            raise InfraError(
                f"no Dask worker joined the scheduler within {WORKER_WAIT} s",
                hint=f"start workers on Docker hosts: dask worker {self.dask.scheduler.address} --resources {LANES}=2",
            ) from None
        return dict(self.dask.scheduler_info(n_workers=-1)["workers"])

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
        alive = _live_leases(self.dask, tags)
        where = ", ".join(sorted({f"{c['run_id']} on {c['host']}" for c in running}))
        if alive:
            raise UsageError(
                f"another client is running these cells now: {where}",
                hint="let it finish or stop it (Ctrl-C), then resume",
            )
        distributed = _distributed()
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
        distributed = _distributed()
        tag = f"repro-lib-{job.sweep_id}-{secrets.token_hex(3)}"
        queue = distributed.Queue(tag, client=self.dask)
        stop = distributed.Event(f"{tag}-stop", client=self.dask)
        resources = {LANES: 1} if self._uses_lanes() else None
        futures: dict[Any, str] = {}
        variables = []
        owners = []
        lease = _Lease(self.dask, tag)
        lines = _Lines(progress, job.paths.run_dir(job.session_id))
        pending: set[Any] = set()
        try:
            for cell in job.cells:
                run_id = cell.run_id(job.sweep_id)
                done = distributed.Variable(f"{tag}-{run_id}-done", client=self.dask)
                done.set([[r.trial, r.outcome.value] for r in job.prior[cell.index]])
                attempts = distributed.Variable(f"{tag}-{run_id}-attempt", client=self.dask)
                # a resume is one more attempt at a cell, whoever made the earlier ones
                attempts.set(max((r.attempt for r in job.prior[cell.index]), default=0))
                variables += [done, attempts]
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
            for owner in owners:  # unless a later client of the sweep took the cell over
                with contextlib.suppress(Exception):
                    if _peek(owner) == tag:
                        owner.delete()
            lease.end()
            with contextlib.suppress(Exception):
                queue.close()

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
    distributed = _distributed()
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


def owner_name(run_id: str) -> str:
    """The Dask ``Variable`` naming the client (its tag) that owns a cell now."""
    return f"repro-lib-owner-{run_id}"


_UNKNOWN = object()  # a Variable that could not be read (not: one that is unset)


def _peek(variable: Any) -> Any:
    """A Variable's value now: None when unset, ``_UNKNOWN`` when it cannot be read."""
    try:
        return variable.get(timeout=0)
    except TimeoutError:
        return None
    except Exception:
        return _UNKNOWN


class _Lease:
    """The client's lease: a Variable it rewrites every ``LEASE_RENEW`` seconds from a
    thread, so its cells can tell it lives (a value that keeps changing)."""

    def __init__(self, dask_client: Any, tag: str) -> None:
        self.variable = _distributed().Variable(f"{tag}-lease", client=dask_client)
        self.variable.set(0)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="repro-lib-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        count = 0
        while not self._done.wait(LEASE_RENEW):
            count += 1
            with contextlib.suppress(Exception):  # a missed renewal only ages the lease
                self.variable.set(count)

    def end(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.variable.delete()


def _live_leases(dask_client: Any, tags: list[str]) -> list[str]:
    """The tags whose client renewed its lease within ``LEASE_PROBE`` seconds."""
    distributed = _distributed()
    variables = {t: distributed.Variable(f"{t}-lease", client=dask_client) for t in tags}
    first = {t: _peek(v) for t, v in variables.items()}
    deadline = time.monotonic() + LEASE_PROBE
    alive: set[str] = set()
    while time.monotonic() < deadline and len(alive) < len(tags):
        time.sleep(LEASE_RENEW / 4)
        for t, v in variables.items():
            now = _peek(v)
            if now is not None and now is not _UNKNOWN and now != first[t]:
                alive.add(t)
    return sorted(alive)


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


# worker side ---------------------------------------------------------------------

_SESSIONS: dict[tuple[str, str], Any] = {}
_SESSIONS_LOCK = threading.Lock()
_ENGINE_LOCKS: dict[str, threading.Lock] = {}
#: the cell tasks this worker runs (or that wait for its engine): id -> what they are
_RUNNING: dict[int, dict[str, str]] = {}

_Done = namedtuple("_Done", "trial outcome")


def worker_store(paths: Paths) -> Path:
    return paths.raw / f"worker-{lab.host_name()}.sqlite"


def set_docker_host(host: str) -> str:
    import os

    os.environ["DOCKER_HOST"] = host
    return host


def set_host_name(name: str) -> str:
    import os

    os.environ["REPRO_LIB_HOST"] = name
    return name


def check_host(images: list[str]) -> dict[str, Any]:
    """On a worker: can it reach its engine, and which of ``images`` does it lack?"""
    result: dict[str, Any] = {"host": lab.host_name(), "missing": [], "error": None}
    try:
        client = lab.connect(timeout=30)
    except ReproError as exc:
        result["error"] = exc.one_line()
        return result
    with contextlib.closing(client):
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                result["missing"].append(image)
            except docker.errors.DockerException as exc:
                result["error"] = f"cannot inspect image {image}: {exc}"
    return result


def worker_rows(sweep_id: str) -> dict[str, list[dict[str, Any]]]:
    """On a worker: the runs and trials of ``sweep_id`` its own stores kept."""
    out: dict[str, list[dict[str, Any]]] = {"runs": [], "trials": []}
    for path in sorted(Paths.from_env().raw.glob("worker-*.sqlite")):
        with Store(path) as store:
            for run in store.runs(sweep_id):
                out["runs"].append(run)
                out["trials"] += [r.to_row() for r in store.trials(run["run_id"])]
    return out


def running_cells(run_ids: list[str]) -> list[dict[str, str]]:
    """On a worker: its cell tasks of ``run_ids`` that are running or waiting to."""
    wanted = set(run_ids)
    with _SESSIONS_LOCK:
        return [dict(c) for c in _RUNNING.values() if c["run_id"] in wanted]


def pack_bundle(bundle: Path, host: str) -> bytes:
    """A failure's evidence bundle as a tar.gz, smallest files first up to ``BUNDLE_CAP``
    bytes; ``omitted.txt`` names the files left on the host, with their paths there."""
    files = sorted((p for p in bundle.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    buffer, used, omitted = io.BytesIO(), 0, []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            size = path.stat().st_size
            if used + size > BUNDLE_CAP:
                omitted.append(
                    f"{path.relative_to(bundle)} ({size} bytes): on host {host} at {path}"
                )
                continue
            tar.add(path, arcname=str(path.relative_to(bundle)))
            used += size
        if omitted:
            note = (
                f"Files over the {BUNDLE_CAP} byte cap of a bundle sent to the client:\n"
                + "\n".join(omitted)
                + "\n"
            ).encode()
            info = tarfile.TarInfo("omitted.txt")
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    return buffer.getvalue()


def unpack_bundle(data: bytes, run_dir: Path, evidence_path: str) -> None:
    """Unpack a bundle from :func:`pack_bundle` at ``run_dir/evidence_path``, where the
    client's ``repro-lib evidence`` finds it; nothing lands outside ``run_dir``."""
    bundle = (run_dir / evidence_path).resolve()
    if not bundle.is_relative_to(run_dir.resolve()):
        raise OSError(f"evidence path {evidence_path!r} leaves its run directory")
    bundle.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(bundle, filter="data")


def worker_bundle(run_id: str, evidence_path: str, host: str) -> bytes | None:
    """On a worker: the packed bundle of one failure of ``run_id`` it keeps, if any."""
    runs = Paths.from_env().runs
    found = sorted(runs.glob(f"*/{run_id}/{evidence_path}"))
    # workers sharing a home (a LocalCluster) keep their bundles in per-host directories
    found.sort(key=lambda p: not p.relative_to(runs).parts[0].endswith(_label_safe(host)))
    for bundle in found:
        if bundle.is_dir():
            return pack_bundle(bundle, host)
    return None


def close_sessions(sweep_id: str) -> int:
    """On a worker: remove the registries and scratch files of ``sweep_id``."""
    closed = 0
    with _SESSIONS_LOCK:
        for key in [k for k in _SESSIONS if k[0] == sweep_id]:
            with contextlib.suppress(Exception):
                _SESSIONS.pop(key).__exit__(None, None, None)
                closed += 1
    return closed


def _label_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _session(spec: dict[str, Any], plan: Any, paths: Paths) -> Any:
    """This worker's registries for the sweep: started by its first cell, kept for the rest."""
    client = lab.connect()
    session_id = spec.get("session_id") or spec["sweep_id"]
    key = (session_id, lab.engine_host_of(client))
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            scenario = load_scenario(
                plan.batch.get("scenario"), base_image=plan.batch.get("base_image")
            )
            offline = bool(plan.batch.get("offline"))
            if plan.backend == "container":
                for image in {spec["cell"]["image"], spec["cell"]["cache_image"]} - {None}:
                    lab.ensure_image(client, image, offline=offline)
            # workers sharing one engine (a LocalCluster) must not share labels: one
            # worker's cleanup would remove another's registries
            session = LabSession(
                client,
                f"{session_id}-{_label_safe(lab.host_name())}",
                paths=paths,
                offline=offline,
                registry_image=plan.batch.get("registry_image", lab.DEFAULT_REGISTRY_IMAGE),
                need_mirror=supports(backend_class(plan.backend), "mirror"),
                seed_images=scenario.base_images(),
                hub_url=plan.batch.get("hub_url", BatchOptions.hub_url),
            )
            session.__enter__()
            _SESSIONS[key] = session
        else:
            client.close()
        return _SESSIONS[key]


class _StreamingStore:
    """The worker's own store, with every write also put on the sweep's queue (and a
    failure's evidence bundle with its record)."""

    def __init__(
        self, local: Store, queue: Any, done_var: Any, done: list[_Done], work_dir: Path
    ) -> None:
        self.local, self.queue, self.done_var = local, queue, done_var
        self.done = list(done)
        self.work_dir = work_dir

    def send_unsent(self, run_id: str) -> list[_Done]:
        """Put on the queue what this host recorded of ``run_id`` but the client never
        heard of (a try recorded as its worker or client died); returns all done."""
        known = {d.trial for d in self.done}
        for record in self.local.trials(run_id):
            if record.trial not in known:
                self._send(record)
        self.done_var.set([[d.trial, Outcome(d.outcome).value] for d in self.done])
        return list(self.done)

    def _send(self, record: TrialRecord) -> None:
        self.queue.put({"kind": "trial", "row": record.to_row()})
        self.done.append(_Done(record.trial, record.outcome))
        bundle = self.work_dir / record.evidence_path if record.evidence_path else None
        if bundle is not None and bundle.is_dir():
            with contextlib.suppress(OSError, tarfile.TarError):  # the record stands alone
                self.queue.put(
                    {
                        "kind": "bundle",
                        "run_id": record.run_id,
                        "path": record.evidence_path,
                        "data": pack_bundle(bundle, lab.host_name()),
                    }
                )

    def start_run(self, run_id: str, params: dict[str, Any], *, sweep_id=None, cell=None) -> None:
        self.local.start_run(run_id, params, sweep_id=sweep_id, cell=cell)
        self.queue.put(
            {
                "kind": "run",
                "run_id": run_id,
                "params": _plain(params),
                "sweep_id": sweep_id,
                "cell": cell,
            }
        )

    def append(self, record: TrialRecord) -> None:
        self.local.append_once(record)  # what this host kept is never written twice
        self._send(record)
        self.done_var.set([[d.trial, Outcome(d.outcome).value] for d in self.done])

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        self.local.finish_run(run_id, status, summary)
        self.queue.put(
            {"kind": "finish", "run_id": run_id, "status": status, "summary": _plain(summary)}
        )

    def trial_numbers(self, run_id: str) -> set[int]:
        return self.local.trial_numbers(run_id) | {d.trial for d in self.done}

    def tag_run(self, run_id: str, *, shard: str | None, plan_digest: str | None) -> None:
        self.local.tag_run(run_id, shard=shard, plan_digest=plan_digest)
        self.queue.put(
            {"kind": "tag", "run_id": run_id, "shard": shard, "plan_digest": plan_digest}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


def _plain(value: Any) -> Any:
    """JSON-shaped data for the queue (msgpack carries no Paths or enums)."""
    import json

    return json.loads(json.dumps(value, default=str)) if value is not None else None


class _StreamReporter:
    def __init__(self, queue: Any, run_id: str) -> None:
        self.queue, self.run_id = queue, run_id

    def started(self, cell: str, done: int, total: int) -> None:
        self.queue.put(
            {
                "kind": "started",
                "run_id": self.run_id,
                "cell": cell,
                "done": done,
                "total": total,
                "host": lab.host_name(),
            }
        )

    def record(self, record: TrialRecord) -> None:
        pass  # the store already streamed it

    def skipped(self, n: int) -> None:
        if n > 0:
            self.queue.put({"kind": "skipped", "n": n})


class _Watch:
    """What a cell asks before each try: should it go on?

    It stops when its client stops the sweep, when a later client of the sweep
    owns the cell (a resume took it over), or when its client's lease has not
    moved for ``LEASE_TIMEOUT`` seconds of this worker's clock (the client died).
    Once it says stop it keeps saying it.
    """

    def __init__(self, tag: str, run_id: str) -> None:
        import distributed  # why: Dask is an optional extra; only its workers run this

        self.tag = tag
        self.stop = distributed.Event(f"{tag}-stop")
        self.owner = distributed.Variable(owner_name(run_id))
        self.lease = distributed.Variable(f"{tag}-lease")
        self.seen: tuple[Any, float] = (_peek(self.lease), time.monotonic())
        self.reason = ""

    def stopped(self) -> bool:
        if not self.reason:
            self.reason = self._check()
        return bool(self.reason)

    def _check(self) -> str:
        if self.stop.is_set():
            return "stopped"
        owner = _peek(self.owner)
        if owner is not _UNKNOWN and owner != self.tag:
            return "taken over"
        lease, now = _peek(self.lease), time.monotonic()
        if lease is not _UNKNOWN and lease is not None and lease != self.seen[0]:
            self.seen = (lease, now)
        elif now - self.seen[1] > LEASE_TIMEOUT:
            return "client gone"
        return ""


def run_cell_task(spec: dict[str, Any]) -> dict[str, Any]:
    """A Dask task: run one cell on this worker's Docker host, streaming its records."""
    plan = Plan(**spec["plan"])
    cell = Cell(**spec["cell"])
    tag, sweep_id = spec["tag"], spec["sweep_id"]
    session_id = spec.get("session_id") or sweep_id
    run_id = cell.run_id(sweep_id)
    watch = _Watch(tag, run_id)
    me = {"run_id": run_id, "tag": tag, "host": lab.host_name(), "session": session_id}
    with _SESSIONS_LOCK:
        _RUNNING[id(me)] = me
    try:
        return _run_cell_task(spec, plan, cell, run_id, watch, stop_rule(plan))
    except KeyboardInterrupt:
        # the cell stopped before its end; a KeyboardInterrupt leaving a task would
        # end the whole Dask worker, with the other cells it runs
        if watch.reason == "taken over":
            raise InfraError(
                f"cell {cell.key()} was taken over by another client of sweep {sweep_id}",
                hint="a later `repro-lib sweep --resume` runs it now; let that one finish",
            ) from None
        raise InfraError(f"cell {cell.key()} stopped: {watch.reason or 'interrupted'}") from None
    finally:
        with _SESSIONS_LOCK:
            _RUNNING.pop(id(me), None)
            others = any(c["session"] == session_id for c in _RUNNING.values())
        if watch.reason == "client gone" and not others:
            close_sessions(session_id)  # nobody will come to remove its registries


def _run_cell_task(
    spec: dict[str, Any], plan: Any, cell: Any, run_id: str, watch: _Watch, rule: Any
) -> dict[str, Any]:
    import distributed  # why: Dask is an optional extra; only its workers run this

    tag, sweep_id = spec["tag"], spec["sweep_id"]
    queue = distributed.Queue(tag)
    done_var = distributed.Variable(f"{tag}-{run_id}-done")
    attempt_var = distributed.Variable(f"{tag}-{run_id}-attempt")
    attempt = int(attempt_var.get(timeout=30) or 0) + 1
    attempt_var.set(attempt)
    done = [_Done(int(t), Outcome(o)) for t, o in done_var.get(timeout=30)]
    paths = Paths.from_env()
    client = lab.connect()
    engine = lab.engine_host_of(client)
    # a reset prunes a whole engine: engine-backend cells on one host take turns
    lock = (
        _ENGINE_LOCKS.setdefault(engine, threading.Lock())
        if plan.backend != "container"
        else contextlib.nullcontext()
    )
    with contextlib.closing(client), lock:
        if watch.stopped():  # e.g. it waited for the engine while its client died
            raise KeyboardInterrupt("sweep stopped")
        session = _session(spec, plan, paths)
        with Store(worker_store(paths)) as local:
            store = _StreamingStore(local, queue, done_var, done, session.dir / run_id)
            done = store.send_unsent(run_id)
            summary = run_cell(
                session,
                plan,
                store,  # type: ignore[arg-type]
                cell,
                sweep_id,
                lane=0,
                client=client,
                rule=rule,
                prior=done,
                reporter=_StreamReporter(queue, run_id),
                stop_requested=watch.stopped,
                command=spec.get("command", ""),
                attempt=attempt,
                tags=tuple(spec.get("tags") or (None, "")),
            )
    return {"run_id": run_id, "host": lab.host_name(), "attempt": attempt, "tries": summary.tries}
