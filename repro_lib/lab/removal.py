"""Removing the lab's objects, and making way for a name a dead run left behind.

Run ids of shards and sweep cells are stable (a resume reuses them), so the
names of their containers and volumes are too. After a crash without ``clean``,
and after an engine restart brought back a container with a restart policy, a
new attempt finds the old objects under its names: a container name conflicts,
and ``volumes.create`` silently returns the old volume with its old contents.
"""

from __future__ import annotations

import contextlib
import time

import docker
import docker.errors
from docker.models.volumes import Volume

from ..config import OWNER_PID_LABEL
from ..errors import InfraError
from .runs import owner_alive

#: How long a volume may stay "in use" after the container holding it was removed.
VOLUME_RELEASE_TIMEOUT_S = 15.0


def remove_volume(volume: Volume, *, timeout: float = VOLUME_RELEASE_TIMEOUT_S) -> None:
    """Remove ``volume``, waiting while the engine still counts it as in use.

    The engine can answer 409 "volume is in use" for a moment after the force
    removal of the container that mounted it returned (seen with a registry whose
    restart policy was bringing it back), so a conflict is retried until
    ``timeout``; a volume already gone is fine.

    Raises:
        InfraError: the volume could not be removed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            volume.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or time.monotonic() >= deadline:
                raise InfraError(f"cannot remove volume {volume.name}: {exc}") from exc
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot remove volume {volume.name}: {exc}") from exc
        time.sleep(0.2)


def _claim(labels: dict[str, str], what: str) -> None:
    if owner_alive(labels):
        raise InfraError(
            f"{what} belongs to a live run (pid {labels.get(OWNER_PID_LABEL, '?')})",
            hint="wait for that run to end, or stop it and run `repro-lib clean`",
        )


def make_way_for_container(client: docker.DockerClient, name: str) -> None:
    """Remove a container named ``name`` that a run no longer alive left behind.

    Raises:
        InfraError: a live run owns it.
    """
    try:
        old = client.containers.get(name)
    except docker.errors.NotFound:
        return
    _claim(old.labels or {}, f"container {name}")
    with contextlib.suppress(docker.errors.NotFound):
        old.remove(force=True, v=True)


def make_way_for_volume(client: docker.DockerClient, name: str) -> None:
    """Remove a volume named ``name`` that a run no longer alive left behind.

    Raises:
        InfraError: a live run owns it.
    """
    try:
        old = client.volumes.get(name)
    except docker.errors.NotFound:
        return
    _claim(old.attrs.get("Labels") or {}, f"volume {name}")
    for holder in client.containers.list(all=True, filters={"volume": name}):
        _claim(holder.labels or {}, f"volume {name} (mounted by {holder.name})")
        with contextlib.suppress(docker.errors.NotFound):
            holder.remove(force=True, v=True)
    remove_volume(old)
