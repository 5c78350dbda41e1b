"""BuildKit state volumes: one per lane, replaced by a fresh one at each reset."""

from __future__ import annotations

import docker
import docker.errors
from docker.models.volumes import Volume

from ..config import NAME_PREFIX
from ..errors import InfraError
from .removal import make_way_for_volume, remove_volume
from .runs import role_labels


class StateVolume:
    """A BuildKit state volume that can be replaced by a fresh one (a reset)."""

    def __init__(
        self,
        client: docker.DockerClient,
        run_id: str,
        *,
        lane: int = 0,
        keep: bool = False,
        label_id: str | None = None,
    ):
        self.client = client
        self.run_id = run_id
        self.label_id = label_id or run_id
        self.lane = lane
        self.keep = keep
        self.generation = 0
        self.volume: Volume | None = None

    @property
    def name(self) -> str:
        if self.volume is None:
            raise InfraError("state volume not created")
        return self.volume.name

    def reset(self) -> Volume:
        """Remove the current volume (if any) and create a new, empty one."""
        self.remove()
        self.generation += 1
        name = f"{NAME_PREFIX}-{self.run_id}-state-l{self.lane}-g{self.generation}"
        try:
            # a fresh state must be empty: a volume left under this name by a dead
            # attempt of the same run would hand the reset its old cache
            make_way_for_volume(self.client, name)
            self.volume = self.client.volumes.create(
                name=name, labels=role_labels(self.label_id, "buildkit-state", keep=self.keep)
            )
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot create state volume {name}: {exc}") from exc
        return self.volume

    def remove(self) -> None:
        if self.volume is None or self.keep:
            self.volume = None
            return
        remove_volume(self.volume)
        self.volume = None

    def __enter__(self) -> StateVolume:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
