"""What ``clean`` removes: the lab's objects by label, sparing live and kept runs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import docker
import docker.errors

from ..config import KEEP_LABEL
from ..errors import InfraError
from .removal import remove_volume
from .runs import label_filter, owner_alive


@dataclass
class SweepResult:
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    skipped_kept: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.containers) + len(self.volumes) + len(self.images)


def sweep(
    client: docker.DockerClient,
    run_id: str | None = None,
    *,
    include_live: bool = False,
) -> SweepResult:
    """Remove lab objects by label.

    With ``run_id``, everything of that run. Without it, everything of runs whose
    owner process is gone (or everything, with ``include_live``), so a new run
    reaps what crashed runs left but never what a live run owns.
    """
    result = SweepResult()
    flt = label_filter(run_id)

    def wanted(obj_labels: dict[str, str], name: str) -> bool:
        if run_id or include_live:
            return True
        if obj_labels.get(KEEP_LABEL) == "true":
            result.skipped_kept.append(name)
            return False
        if not owner_alive(obj_labels):
            return True
        result.skipped_live.append(name)
        return False

    try:
        # another live run removes its containers at any time: one gone between
        # the listing and its inspection is skipped, not a failed cleanup
        for c in client.containers.list(all=True, filters=flt, ignore_removed=True):
            if wanted(c.labels, c.name):
                with contextlib.suppress(docker.errors.NotFound):
                    c.remove(force=True, v=True)
                result.containers.append(c.name)
        for v in client.volumes.list(filters=flt):
            if wanted(v.attrs.get("Labels") or {}, v.name):
                # its containers went just above; the engine may hold it a moment longer
                remove_volume(v)
                result.volumes.append(v.name)
        for img in client.images.list(filters=flt):
            if wanted(img.labels or {}, img.short_id):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.images.remove(img.id, force=True)
                result.images.append(img.short_id)
    except docker.errors.DockerException as exc:
        raise InfraError(f"cleanup failed: {exc}") from exc
    return result


def leftovers(client: docker.DockerClient, run_id: str | None = None) -> dict[str, list[str]]:
    flt = label_filter(run_id)
    return {
        "containers": [
            c.name for c in client.containers.list(all=True, filters=flt, ignore_removed=True)
        ],
        "volumes": [v.name for v in client.volumes.list(filters=flt)],
    }
