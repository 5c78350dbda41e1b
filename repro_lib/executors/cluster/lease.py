"""Who may run a cell: the client's lease, the owner of each cell, the stop event.

The client renews a lease (a Dask ``Variable`` it rewrites every ``LEASE_RENEW``
seconds) and names itself the owner of each of its cells (one ``Variable`` per
run id). Before each try a cell asks its :class:`Watch` whether to go on: it
stops when its client set the sweep's stop ``Event``, when a later client owns
the cell, or when the lease has not moved for ``LEASE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from ...errors import MissingRequirement

LEASE_RENEW = 1.0  # seconds between two renewals of a client's lease
LEASE_TIMEOUT = 10.0  # a cell whose client renewed no lease for this long stops
LEASE_PROBE = 3 * LEASE_RENEW  # how long a resume watches an earlier client's lease


def dask_distributed() -> Any:
    """The ``distributed`` module (Dask is an optional extra).

    Raises:
        MissingRequirement: Dask is not installed.
    """
    try:
        import distributed
    except ImportError:
        raise MissingRequirement(
            "Dask distributed is not installed", hint="pip install 'repro-lib[cluster]'"
        ) from None
    return distributed


def owner_name(run_id: str) -> str:
    """The Dask ``Variable`` naming the client (its tag) that owns a cell now."""
    return f"repro-lib-owner-{run_id}"


UNKNOWN = object()  # a Variable that could not be read (not: one that is unset)


def peek(variable: Any) -> Any:
    """A Variable's value now: None when unset, ``UNKNOWN`` when it cannot be read."""
    try:
        return variable.get(timeout=0)
    except TimeoutError:
        return None
    except Exception:
        return UNKNOWN


class Lease:
    """The client's lease: a Variable it rewrites every ``LEASE_RENEW`` seconds from a
    thread, so its cells can tell it lives (a value that keeps changing)."""

    def __init__(self, dask_client: Any, tag: str) -> None:
        self.variable = dask_distributed().Variable(f"{tag}-lease", client=dask_client)
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


def live_leases(dask_client: Any, tags: list[str]) -> list[str]:
    """The tags whose client renewed its lease within ``LEASE_PROBE`` seconds."""
    distributed = dask_distributed()
    variables = {t: distributed.Variable(f"{t}-lease", client=dask_client) for t in tags}
    first = {t: peek(v) for t, v in variables.items()}
    deadline = time.monotonic() + LEASE_PROBE
    alive: set[str] = set()
    while time.monotonic() < deadline and len(alive) < len(tags):
        time.sleep(LEASE_RENEW / 4)
        for t, v in variables.items():
            now = peek(v)
            if now is not None and now is not UNKNOWN and now != first[t]:
                alive.add(t)
    return sorted(alive)


class Watch:
    """What a cell asks before each try: should it go on?

    It stops when its client stops the sweep, when a later client of the sweep
    owns the cell (a resume took it over), or when its client's lease has not
    moved for ``LEASE_TIMEOUT`` seconds of this worker's clock (the client died).
    Once it says stop it keeps saying it.
    """

    def __init__(self, tag: str, run_id: str) -> None:
        distributed = dask_distributed()
        self.tag = tag
        self.stop = distributed.Event(f"{tag}-stop")
        self.owner = distributed.Variable(owner_name(run_id))
        self.lease = distributed.Variable(f"{tag}-lease")
        self.seen: tuple[Any, float] = (peek(self.lease), time.monotonic())
        self.reason = ""

    def stopped(self) -> bool:
        if not self.reason:
            self.reason = self._check()
        return bool(self.reason)

    def _check(self) -> str:
        if self.stop.is_set():
            return "stopped"
        owner = peek(self.owner)
        if owner is not UNKNOWN and owner != self.tag:
            return "taken over"
        lease, now = peek(self.lease), time.monotonic()
        if lease is not UNKNOWN and lease is not None and lease != self.seen[0]:
            self.seen = (lease, now)
        elif now - self.seen[1] > LEASE_TIMEOUT:
            return "client gone"
        return ""
