"""The worker side: what runs on each Dask worker's Docker host.

A cell task (:func:`run_cell_task`) runs one cell with the package's
:func:`~repro_lib.executors.run_cell` against this host's engine, with this
worker's registries for the sweep (started by its first cell, kept for the
rest). Each record goes to a store of the host's own
(``data/raw/worker-<host>.sqlite``) and onto the sweep's ``Queue`` for the
client, and each done trial onto the cell's :class:`~.done.DoneList`, so a rerun
after a worker death skips it. The other functions here are what the client
runs on every worker with ``Client.run``: checks, gathering, clean-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import threading
from pathlib import Path
from typing import Any

import docker

from ... import lab
from ...batch import BatchOptions, LabSession
from ...builders import backend_class, supports
from ...config import Paths
from ...errors import InfraError, ReproError
from ...plan import Cell, Plan, stop_rule
from ...records import TrialRecord
from ...scenario import load_scenario
from ...store import Store
from .. import run_cell
from .bundles import pack_bundle
from .done import Done, DoneList, done_list_name
from .lease import Watch, dask_distributed

_SESSIONS: dict[tuple[str, str], Any] = {}
_SESSIONS_LOCK = threading.Lock()
_ENGINE_LOCKS: dict[str, threading.Lock] = {}
#: the cell tasks this worker runs (or that wait for its engine): id -> what they are
_RUNNING: dict[int, dict[str, str]] = {}


def worker_store(paths: Paths) -> Path:
    return paths.raw / f"worker-{lab.host_name()}.sqlite"


def set_docker_host(host: str) -> str:
    os.environ["DOCKER_HOST"] = host
    return host


def set_host_name(name: str) -> str:
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

    def __init__(self, local: Store, queue: Any, done: DoneList, work_dir: Path) -> None:
        self.local, self.queue, self.done = local, queue, done
        self.work_dir = work_dir

    def send_unsent(self, run_id: str) -> list[Done]:
        """Put on the queue what this host recorded of ``run_id`` but the client never
        heard of (a try recorded as its worker or client died); returns all done."""
        known = {d.trial for d in self.done.entries}
        unsent = [r for r in self.local.trials(run_id) if r.trial not in known]
        self.done.extend([self._send(record) for record in unsent])
        return list(self.done.entries)

    def _send(self, record: TrialRecord) -> Done:
        self.queue.put({"kind": "trial", "row": record.to_row()})
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
        return Done(record.trial, record.outcome)

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
        self.done.extend([self._send(record)])

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        self.local.finish_run(run_id, status, summary)
        self.queue.put(
            {"kind": "finish", "run_id": run_id, "status": status, "summary": _plain(summary)}
        )

    def trial_numbers(self, run_id: str) -> set[int]:
        return self.local.trial_numbers(run_id) | {d.trial for d in self.done.entries}

    def tag_run(self, run_id: str, *, shard: str | None, plan_digest: str | None) -> None:
        self.local.tag_run(run_id, shard=shard, plan_digest=plan_digest)
        self.queue.put(
            {"kind": "tag", "run_id": run_id, "shard": shard, "plan_digest": plan_digest}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


def _plain(value: Any) -> Any:
    """JSON-shaped data for the queue (msgpack carries no Paths or enums)."""
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
    plan = Plan(**spec["plan"])
    cell = Cell(**spec["cell"])
    tag, sweep_id = spec["tag"], spec["sweep_id"]
    session_id = spec.get("session_id") or sweep_id
    run_id = cell.run_id(sweep_id)
    watch = Watch(tag, run_id)
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
    spec: dict[str, Any], plan: Any, cell: Any, run_id: str, watch: Watch, rule: Any
) -> dict[str, Any]:
    distributed = dask_distributed()
    tag, sweep_id = spec["tag"], spec["sweep_id"]
    queue = distributed.Queue(tag)
    done = DoneList(done_list_name(tag, run_id))
    done.read()
    attempt_var = distributed.Variable(f"{tag}-{run_id}-attempt")
    attempt = int(attempt_var.get(timeout=30) or 0) + 1
    attempt_var.set(attempt)
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
            store = _StreamingStore(local, queue, done, session.dir / run_id)
            prior = store.send_unsent(run_id)
            summary = run_cell(
                session,
                plan,
                store,  # type: ignore[arg-type]
                cell,
                sweep_id,
                lane=0,
                client=client,
                rule=rule,
                prior=prior,
                reporter=_StreamReporter(queue, run_id),
                stop_requested=watch.stopped,
                command=spec.get("command", ""),
                attempt=attempt,
                tags=tuple(spec.get("tags") or (None, "")),
            )
    return {"run_id": run_id, "host": lab.host_name(), "attempt": attempt, "tries": summary.tries}
