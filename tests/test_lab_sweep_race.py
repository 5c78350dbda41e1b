"""Two runs on one engine: a run's start-up sweep must not trip over the other's containers.

Every run first reaps what crashed runs left (``lab.sweep`` without a run id),
listing every lab container. A container another live run removes between that
listing and its inspection used to stop the new run with "cleanup failed: 404",
a lost batch when two ``repro-lib reproduce`` were started together.
"""

from __future__ import annotations

import threading
import time

from repro_lib import lab

from .conftest import BASE_FIXTURE

CHURNS = 30  # containers the other run makes and removes while this one sweeps
DEADLINE_S = 30


def test_sweeping_while_another_run_creates_and_removes_containers(docker_client, fixture_images):
    other_run = lab.labels("other-live-run")  # owned by this (live) process: never reaped
    stop = threading.Event()
    churned: list[str] = []

    def other_run_at_work() -> None:
        while not stop.is_set():
            container = docker_client.containers.create(BASE_FIXTURE, ["true"], labels=other_run)
            container.remove(force=True)
            churned.append(container.id)

    worker = threading.Thread(target=other_run_at_work)
    worker.start()
    errors: list[str] = []
    sweeps = 0
    began = time.monotonic()
    try:
        while len(churned) < CHURNS and time.monotonic() - began < DEADLINE_S:
            try:
                lab.sweep(docker_client)
            except lab.InfraError as exc:
                errors.append(exc.one_line())
            sweeps += 1
    finally:
        stop.set()
        worker.join(timeout=30)
    assert errors == [], f"{len(errors)} of {sweeps} sweeps failed, first: {errors[0]}"
    assert len(churned) >= CHURNS, f"the other run made only {len(churned)} containers"
