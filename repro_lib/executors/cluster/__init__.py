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
reruns the cell elsewhere; the rerun reads which trials are already done from
the cell's done list on the scheduler, which the workers extend one chunk at a
time (:mod:`.done`), so it runs only the missing ones and records its
``attempt``.

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

The parts, one question each: :mod:`.client` (the executor and the client's
store), :mod:`.worker` (what runs on a worker), :mod:`.lease` (may a cell go
on), :mod:`.done` (which trials a cell has done), :mod:`.bundles` (a failure's
evidence on its way to the client).
"""

from .bundles import BUNDLE_CAP, pack_bundle, unpack_bundle
from .client import (
    CONNECT_TIMEOUT,
    LANES,
    ORPHAN_WAIT,
    WORKER_WAIT,
    DaskExecutor,
    close_cluster,
    open_cluster,
)
from .done import CHUNK, Done, DoneList
from .lease import LEASE_PROBE, LEASE_RENEW, LEASE_TIMEOUT, owner_name
from .worker import run_cell_task, worker_store

__all__ = [
    "BUNDLE_CAP",
    "CHUNK",
    "CONNECT_TIMEOUT",
    "LANES",
    "LEASE_PROBE",
    "LEASE_RENEW",
    "LEASE_TIMEOUT",
    "ORPHAN_WAIT",
    "WORKER_WAIT",
    "DaskExecutor",
    "Done",
    "DoneList",
    "close_cluster",
    "open_cluster",
    "owner_name",
    "pack_bundle",
    "run_cell_task",
    "unpack_bundle",
    "worker_store",
]
