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
and records its ``attempt``. After a client crash ``repro-lib sweep --resume``
gathers what the workers' own stores hold.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
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

    def gather(self, sweep_id: str, store: Store) -> int:
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
                added += store.append_once(TrialRecord.from_row(row))
        return added

    def run(self, job: SweepJob, progress: SweepProgress) -> None:
        distributed = _distributed()
        tag = f"repro-lib-{job.sweep_id}-{secrets.token_hex(3)}"
        queue = distributed.Queue(tag, client=self.dask)
        stop = distributed.Event(f"{tag}-stop", client=self.dask)
        resources = {LANES: 1} if self._uses_lanes() else None
        futures: dict[Any, str] = {}
        variables = []
        for cell in job.cells:
            run_id = cell.run_id(job.sweep_id)
            done = distributed.Variable(f"{tag}-{run_id}-done", client=self.dask)
            done.set([[r.trial, r.outcome.value] for r in job.prior[cell.index]])
            attempts = distributed.Variable(f"{tag}-{run_id}-attempt", client=self.dask)
            attempts.set(0)
            variables += [done, attempts]
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
        lines = _Lines(progress)
        pending = set(futures)
        try:
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


class _Lines:
    """One progress line per running cell, showing the host it runs on."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress
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


# worker side ---------------------------------------------------------------------

_SESSIONS: dict[tuple[str, str], Any] = {}
_SESSIONS_LOCK = threading.Lock()
_ENGINE_LOCKS: dict[str, threading.Lock] = {}

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
    """The worker's own store, with every write also put on the sweep's queue."""

    def __init__(self, local: Store, queue: Any, done_var: Any, done: list[_Done]) -> None:
        self.local, self.queue, self.done_var = local, queue, done_var
        self.done = list(done)

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
        # an orphaned attempt (its client died) may have taken this number here already
        self.local.append_once(record)
        self.queue.put({"kind": "trial", "row": record.to_row()})
        self.done.append(_Done(record.trial, record.outcome))
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


def run_cell_task(spec: dict[str, Any]) -> dict[str, Any]:
    """A Dask task: run one cell on this worker's Docker host, streaming its records."""
    import distributed  # why: Dask is an optional extra; only its workers run this

    plan = Plan(**spec["plan"])
    cell = Cell(**spec["cell"])
    tag, sweep_id = spec["tag"], spec["sweep_id"]
    run_id = cell.run_id(sweep_id)
    queue = distributed.Queue(tag)
    stop = distributed.Event(f"{tag}-stop")
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
        session = _session(spec, plan, paths)
        with Store(worker_store(paths)) as local:
            summary = run_cell(
                session,
                plan,
                _StreamingStore(local, queue, done_var, done),  # type: ignore[arg-type]
                cell,
                sweep_id,
                lane=0,
                client=client,
                rule=stop_rule(plan),
                prior=done,
                reporter=_StreamReporter(queue, run_id),
                stop_requested=stop.is_set,
                command=spec.get("command", ""),
                attempt=attempt,
                tags=tuple(spec.get("tags") or (None, "")),
            )
    return {"run_id": run_id, "host": lab.host_name(), "attempt": attempt, "tries": summary.tries}
