"""Talking to a Docker engine: the connection, its host facts, container creation, error text."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from ..errors import InfraError, MissingRequirement
from .removal import make_way_for_container
from .runs import host_name


def connect(engine_host: str | None = None, *, timeout: int = 120) -> docker.DockerClient:
    """A Docker SDK client for ``engine_host`` (default: the environment), checked with a ping.

    Raises:
        MissingRequirement: the engine does not answer.
    """
    try:
        if engine_host:
            client = docker.DockerClient(base_url=engine_host, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        where = engine_host or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise MissingRequirement(
            f"Docker engine not reachable at {where}",
            hint="start dockerd (or `repro-lib engine start`) or pass --engine-host",
        ) from exc
    return client


def engine_host_of(client: docker.DockerClient) -> str:
    """The ``DOCKER_HOST`` string matching an SDK client (for the docker CLI)."""
    url = client.api.base_url
    if url.startswith("http+docker://"):
        adapter = client.api.get_adapter(url)
        path = getattr(adapter, "socket_path", None)
        if path:
            return f"unix://{path}"
        return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return url.replace("http://", "tcp://")


@dataclass(frozen=True)
class HostFacts:
    engine_version: str
    kernel: str
    engine_labels: tuple[str, ...] = field(default_factory=tuple)
    host: str = ""
    cpus: int | None = None

    @classmethod
    def of(cls, client: docker.DockerClient) -> HostFacts:
        try:
            info = client.info()
            version = client.version().get("Version", "")
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot query the engine: {exc}") from exc
        return cls(
            engine_version=version,
            kernel=info.get("KernelVersion") or platform.release(),
            engine_labels=tuple(info.get("Labels") or ()),
            host=host_name(),
            cpus=info.get("NCPU"),
        )


UNMASK_SYSTEM_PATHS = "systempaths=unconfined"


def create_container(client: docker.DockerClient, **kwargs: Any) -> Container:
    """``client.containers.create`` that also understands ``systempaths=unconfined``.

    That security option exists only in the docker CLI, which turns it into empty
    ``MaskedPaths``/``ReadonlyPaths``; the engine API rejects it and the SDK has no
    argument for those two fields, so they are set on the host config here.
    """
    if kwargs.get("name"):
        make_way_for_container(client, kwargs["name"])
    opts = list(kwargs.get("security_opt") or [])
    if UNMASK_SYSTEM_PATHS not in opts:
        return client.containers.create(**kwargs)
    kwargs["security_opt"] = [o for o in opts if o != UNMASK_SYSTEM_PATHS]
    from docker.models.containers import _create_container_args

    create = _create_container_args({**kwargs, "version": client.api._version})
    create["host_config"]["MaskedPaths"] = []
    create["host_config"]["ReadonlyPaths"] = []
    created = client.api.create_container(**create)
    return client.containers.get(created["Id"])


def describe_docker_error(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return " ".join(str(text).split())[:300]


def container_kwargs_for_log(kwargs: dict[str, Any]) -> str:
    """A readable one-line rendering of container create arguments for build logs."""
    shown = {k: v for k, v in kwargs.items() if k not in ("labels",)}
    return repr(shown)
