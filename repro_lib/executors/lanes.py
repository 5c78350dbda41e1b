"""Local lanes: cells run in threads on this machine's engine.

Lanes share the registries; each has its own BuildKit state. For the engine
backend with more than one lane each lane gets a private engine, because a
reset prunes a whole engine's builder cache.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import docker

from .. import dockerd, lab
from ..batch import BatchOptions, LabSession
from ..builders import backend_class, supports
from ..config import Paths, lab_id
from ..progress import SweepProgress
from ..records import TrialRecord
from ..scenario import load_scenario
from ..store import Store
from . import SweepJob, run_cell


class LaneEngines:
    """One private engine per lane, loaded with ``images`` from ``client``'s engine.

    A reset prunes the builder cache of a whole engine, so lanes sharing one engine
    would reset each other's state mid-cycle; private engines keep lanes independent.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        paths: Paths,
        sweep_id: str,
        lanes: int,
        images: list[str],
    ):
        self.client, self.paths, self.sweep_id = client, paths, sweep_id
        self.lanes, self.images = lanes, images
        self.names: list[str] = []
        self.hosts: list[str] = []
        self.clients: list[docker.DockerClient] = []

    def __enter__(self) -> LaneEngines:
        try:
            blobs = [
                b"".join(self.client.images.get(image).save(named=True)) for image in self.images
            ]
            for lane in range(self.lanes):
                name = f"{lab_id()}-{self.sweep_id}-l{lane}"
                self.names.append(name)
                started = dockerd.start(self.paths, name, owned=True)
                self.hosts.append(started.host)
                lane_client = lab.connect(started.host)
                for data in blobs:
                    lane_client.images.load(data)
                self.clients.append(lane_client)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.close()
        for name in self.names:
            with contextlib.suppress(Exception):
                dockerd.stop(self.paths, name)
                dockerd.remove_data(self.paths, name)


class _LaneReporter:
    def __init__(self, progress: SweepProgress, lane: int) -> None:
        self.progress, self.lane = progress, lane

    def started(self, cell: str, done: int, total: int) -> None:
        self.progress.lane(self.lane, cell, done, total)

    def record(self, record: TrialRecord) -> None:
        self.progress.record(self.lane, record)

    def skipped(self, n: int) -> None:
        self.progress.skip(n)


class LocalLanes:
    """Threads on one engine, each lane taking the next cell when it is free."""

    name = "lanes"

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def slots(self, job: SweepJob) -> int:
        return max(1, min(job.plan.lanes, len(job.cells) or 1))

    def prepare(self, job: SweepJob) -> None:
        if job.plan.backend == "container":
            for image in job.images:
                lab.ensure_image(self.client, image, offline=bool(job.plan.batch.get("offline")))

    def settle(self, run_ids: list[str]) -> None:
        pass  # lanes are threads of this process: they die with it

    def gather(self, sweep_id: str, store: Store, *, bundles: Path | None = None) -> int:
        return 0  # lanes write to the store directly

    def close(self) -> None:
        pass

    def run(self, job: SweepJob, progress: SweepProgress) -> None:
        plan = job.plan
        lanes = self.slots(job)
        scenario = load_scenario(
            plan.batch.get("scenario"), base_image=plan.batch.get("base_image")
        )
        stop_event = threading.Event()
        errors: list[BaseException] = []
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(
                LabSession(
                    self.client,
                    job.session_id,
                    paths=job.paths,
                    offline=bool(plan.batch.get("offline")),
                    registry_image=plan.batch.get("registry_image", lab.DEFAULT_REGISTRY_IMAGE),
                    need_mirror=supports(backend_class(plan.backend), "mirror"),
                    seed_images=scenario.base_images(),
                    hub_url=plan.batch.get("hub_url", BatchOptions.hub_url),
                )
            )
            if plan.backend != "container" and lanes > 1:
                engines = stack.enter_context(
                    LaneEngines(
                        self.client, job.paths, job.session_id, lanes, scenario.base_images()
                    )
                )
                lane_clients = list(engines.clients)
            else:
                # one SDK client per lane thread: a client's HTTP session is not shared
                host = lab.engine_host_of(self.client)
                lane_clients = [lab.connect(host) for _ in range(lanes)]
                for c in lane_clients:
                    stack.callback(c.close)
            work: queue.Queue = queue.Queue()
            for cell in job.cells:
                work.put(cell)

            def lane_main(lane: int) -> None:
                try:
                    with Store(job.store_path) as store:
                        while not stop_event.is_set():
                            try:
                                cell = work.get_nowait()
                            except queue.Empty:
                                return
                            run_cell(
                                session,
                                plan,
                                store,
                                cell,
                                job.sweep_id,
                                lane=lane,
                                client=lane_clients[lane],
                                rule=job.rule,
                                prior=job.prior[cell.index],
                                reporter=_LaneReporter(progress, lane),
                                stop_requested=stop_event.is_set,
                                command=job.command,
                                tags=job.tags,
                            )
                except BaseException as exc:  # surfaced by the main thread
                    errors.append(exc)
                    stop_event.set()

            threads = [
                threading.Thread(target=lane_main, args=(lane,), daemon=True)
                for lane in range(lanes)
            ]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.2)
            except KeyboardInterrupt:
                stop_event.set()
                for t in threads:
                    t.join()
                raise
            if errors:
                raise errors[0]
