"""Lab resources on a Docker engine: labels, readiness, registries, volumes, cleanup.

Every object the lab creates carries ``repro-lib.run=<run id>`` plus the pid and
host of the process that owns it, so cleanup is a label query and a new run can
reap what dead runs left without touching what a live run owns.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import secrets
import socket
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.volumes import Volume

from .config import (
    KEEP_LABEL,
    LAB_LABEL,
    LABEL_PREFIX,
    NAME_PREFIX,
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    lab_id,
)
from .errors import InfraError, MissingRequirement, ReadinessTimeout, UsageError  # noqa: F401

T = TypeVar("T")

DEFAULT_REGISTRY_IMAGE = "registry:2"


def new_run_id(prefix: str = "r") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def labels(run_id: str, *, keep: bool = False, **extra: str) -> dict[str, str]:
    """Labels for one lab object: the run, its owner process and the caller's extras.

    Raises:
        UsageError: a caller label uses the reserved ``repro-lib.`` namespace.
    """
    for key in extra:
        if key.startswith(LABEL_PREFIX):
            raise UsageError(f"label {key!r} is reserved for the lab")
    out = {
        RUN_LABEL: run_id,
        LAB_LABEL: lab_id(),
        OWNER_PID_LABEL: str(os.getpid()),
        OWNER_HOST_LABEL: socket.gethostname(),
    }
    if keep:
        out[KEEP_LABEL] = "true"
    out.update(extra)
    return out


def role_labels(run_id: str, role: str, *, keep: bool = False) -> dict[str, str]:
    out = labels(run_id, keep=keep)
    out[ROLE_LABEL] = role
    return out


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    transient: tuple[type[BaseException], ...] = (OSError,),
    what: str = "service",
    logs: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value or the deadline passes.

    Exceptions in ``transient`` are retried; anything else propagates.

    Raises:
        ReadinessTimeout: the deadline passed; carries ``logs()`` when given.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except transient as exc:
            last = exc
        if time.monotonic() >= deadline:
            tail = ""
            if logs is not None:
                with contextlib.suppress(Exception):
                    tail = logs()
            reason = f": {last}" if last else ""
            raise ReadinessTimeout(f"{what} not ready after {timeout:.0f}s{reason}", logs=tail)
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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


def host_name() -> str:
    """How records name this Docker host: ``$REPRO_LIB_HOST``, else the machine's hostname.

    Several stand-in hosts on one machine (tests, one engine per worker) need the
    variable to tell their records apart.
    """
    return os.environ.get("REPRO_LIB_HOST") or socket.gethostname()


# images ---------------------------------------------------------------------


def ensure_image(client: docker.DockerClient, image: str, *, offline: bool) -> None:
    """Make ``image`` available locally, pulling it only when allowed.

    Raises:
        MissingRequirement: the image is absent and cannot (or may not) be pulled.
    """
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise InfraError(f"cannot inspect image {image}: {exc}") from exc
    if offline:
        raise MissingRequirement(
            f"image {image} is not present locally and --offline forbids pulling",
            hint=f"`docker load` or `docker pull {image}` first, or drop --offline",
        )
    repo, tag = split_tag(image)
    try:
        client.images.pull(repo, tag=tag)
    except docker.errors.DockerException as exc:
        raise MissingRequirement(
            f"cannot pull image {image}: {exc.__class__.__name__}",
            hint="check the name and your network, or `docker load` it and pass --offline",
        ) from exc


def split_tag(image: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag); a ``:`` inside a registry host:port is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def docker_hub_path(image: str) -> tuple[str, str]:
    """The repository path and tag of a Docker Hub image as a mirror serves it.

    ``alpine`` -> ``library/alpine``; ``user/app:1`` -> ``user/app``, ``1``.

    Raises:
        UsageError: the image lives on another registry (a mirror only serves docker.io).
    """
    name, tag = split_tag(image)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if parts[0] not in ("docker.io", "index.docker.io"):
            raise UsageError(
                f"base image {image} is not on docker.io; the mirror can only stand in for docker.io"
            )
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["library", parts[0]]
    return "/".join(parts), tag


# registries -----------------------------------------------------------------


class Registry:
    """A ``registry:2`` container on 127.0.0.1, host network, labelled with its run.

    Use as a context manager: ``__enter__`` starts it and waits until ``/v2/``
    answers; ``__exit__`` removes the container and its storage volume.

    >>> with Registry(client, run_id, role="cache") as reg:  # doctest: +SKIP
    ...     reg.address
    '127.0.0.1:40123'
    """

    def __init__(
        self,
        client: docker.DockerClient,
        run_id: str,
        *,
        role: str,
        image: str = DEFAULT_REGISTRY_IMAGE,
        port: int | None = None,
        proxy_remote: str | None = None,
        startup_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.role = role
        self.image = image
        self.port = port
        self.proxy_remote = proxy_remote
        self.startup_timeout = startup_timeout
        self.keep = keep
        self.container: Container | None = None
        self.volume: Volume | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> Registry:
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound as exc:
            raise MissingRequirement(
                f"registry image {self.image} is not present locally",
                hint="pull it, or build the fixture with scripts/build-fixtures.sh and pass --registry-image",
            ) from exc
        if self.port is not None and not port_is_free(self.port):
            raise InfraError(
                f"port {self.port} on 127.0.0.1 is already taken",
                hint="choose another port or let the lab pick one",
            )
        fixed_port = self.port
        attempts = 1 if fixed_port is not None else 3
        for attempt in range(attempts):
            port = fixed_port if fixed_port is not None else free_port()
            try:
                self._start_on(port)
                return self
            except InfraError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        return self

    def _start_on(self, port: int) -> None:
        self.port = port
        name = f"{NAME_PREFIX}-{self.run_id}-{self.role}-registry"
        env = {
            "REGISTRY_HTTP_ADDR": self.address,
            "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        }
        if self.proxy_remote:
            env["REGISTRY_PROXY_REMOTEURL"] = self.proxy_remote
        try:
            self.volume = self.client.volumes.create(
                name=f"{name}-data",
                labels=role_labels(self.run_id, f"{self.role}-registry", keep=self.keep),
            )
            self.container = self.client.containers.run(
                self.image,
                name=name,
                detach=True,
                network_mode="host",
                environment=env,
                volumes={self.volume.name: {"bind": "/var/lib/registry", "mode": "rw"}},
                labels=role_labels(self.run_id, f"{self.role}-registry", keep=self.keep),
                # comes back by itself when the engine restarts mid-batch
                restart_policy={"Name": "unless-stopped"},
            )
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot start the {self.role} registry: {exc}") from exc
        wait_until(
            self._answers,
            timeout=self.startup_timeout,
            what=f"{self.role} registry on {self.address}",
            transient=(OSError, urllib.error.URLError),
            logs=self.logs,
        )

    def ensure_coming_back(self) -> None:
        """Raise at once if the registry container is gone for good (not restarting).

        Raises:
            InfraError: the container was removed, or exited and will not restart.
        """
        if self.container is None:
            return
        try:
            self.container.reload()
        except docker.errors.NotFound as exc:
            raise InfraError(f"the {self.role} registry container was removed") from exc
        except docker.errors.DockerException:
            return  # the engine itself is away; waiting for it is the caller's job
        policy = (self.container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name")
        if self.container.status in ("exited", "dead") and policy in (None, "", "no"):
            code = self.container.attrs.get("State", {}).get("ExitCode")
            raise InfraError(f"the {self.role} registry container stopped (exit code {code})")

    def answers_http(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as resp:
            return resp.status == 200

    def _answers(self) -> bool:
        if self.container is not None:
            self.container.reload()
            # A proxy whose upstream does not answer exits at once and the restart
            # policy brings it back, again and again: a restart here is a failure.
            restarted = self.container.attrs.get("RestartCount", 0) > 0
            if self.proxy_remote and restarted and self.proxy_remote in self.logs():
                raise InfraError(
                    f"the {self.role} registry cannot reach its upstream {self.proxy_remote}",
                    hint="check the network, pass --hub-url, or run --offline with local images",
                    logs=self.logs(),
                )
            if self.container.status in ("exited", "dead") or restarted:
                raise InfraError(
                    f"{self.role} registry exited: {self.logs()[-300:]}",
                    logs=self.logs(),
                )
        with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as resp:
            return resp.status == 200

    def logs(self) -> str:
        if self.container is None:
            return ""
        try:
            return self.container.logs(tail=50).decode(errors="replace")
        except docker.errors.DockerException:
            return ""

    def has(self, repository: str, tag: str) -> bool:
        req = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.oci.image.index.v1+json, "
                "application/vnd.docker.distribution.manifest.list.v2+json"
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise InfraError(f"registry {self.address} answered {exc.code}") from exc
        except OSError as exc:
            raise InfraError(f"registry {self.address} unreachable: {exc}") from exc

    def stop(self) -> None:
        if self.keep:
            return
        # the container goes with its anonymous volumes (v): a VOLUME of the image that
        # the named volume does not cover would otherwise stay, unlabelled
        for obj, options in ((self.container, {"v": True}), (self.volume, {})):
            if obj is None:
                continue
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    obj.remove(force=True, **options)  # type: ignore[call-arg]
                except docker.errors.DockerException as exc:
                    raise InfraError(f"cannot remove {obj}: {exc}") from exc
        self.container = None
        self.volume = None

    def __enter__(self) -> Registry:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def push_image(client: docker.DockerClient, local: str, remote: str) -> None:
    """Tag ``local`` as ``remote``, push it, and drop the extra tag.

    Raises:
        InfraError: the push failed (the stream reported an error).
    """
    repo, tag = split_tag(remote)
    try:
        client.images.get(local).tag(repo, tag)
        for chunk in client.images.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                raise InfraError(f"push of {remote} failed: {chunk.get('error') or chunk}")
    except docker.errors.DockerException as exc:
        raise InfraError(f"push of {remote} failed: {exc}") from exc
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(remote, noprune=True)


def seed_mirror(client: docker.DockerClient, mirror: Registry, images: Iterable[str]) -> list[str]:
    """Push each local image into the mirror under its docker.io path, once.

    Returns the mirror references that were pushed (already present ones are skipped).
    """
    pushed = []
    for image in images:
        path, tag = docker_hub_path(image)
        if mirror.has(path, tag):
            continue
        push_image(client, image, f"{mirror.address}/{path}:{tag}")
        pushed.append(f"{mirror.address}/{path}:{tag}")
    return pushed


# volumes --------------------------------------------------------------------


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
        try:
            self.volume.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise InfraError(f"cannot remove state volume {self.volume.name}: {exc}") from exc
        self.volume = None

    def __enter__(self) -> StateVolume:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# archives -------------------------------------------------------------------


def tar_of(files: dict[str, bytes], *, dirs: Iterable[str] = (), dir_mode: int = 0o1777) -> bytes:
    """An in-memory tar of ``files`` (path -> content) and world-writable ``dirs``.

    The directories are writable by any uid because rootless BuildKit runs as an
    unprivileged user inside the container and writes its output there.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        made: set[str] = set()

        def add_dir(path: str) -> None:
            path = path.strip("/")
            if not path or path in made:
                return
            add_dir(os.path.dirname(path))
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            info.mode = dir_mode
            info.mtime = int(time.time())
            tar.addfile(info)
            made.add(path)

        for d in dirs:
            add_dir(d)
        for path, content in files.items():
            add_dir(os.path.dirname(path.strip("/")))
            info = tarfile.TarInfo(path.strip("/"))
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def copy_out(container: Container, path: str, dest_dir: str) -> None:
    """Copy ``path`` out of a (possibly stopped) container into ``dest_dir``."""
    try:
        stream, _ = container.get_archive(path)
        buf = io.BytesIO(b"".join(stream))
    except docker.errors.NotFound as exc:
        raise FileNotFoundError(path) from exc
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(dest_dir, filter="data")


# cleanup --------------------------------------------------------------------


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


def _owner_alive(obj_labels: dict[str, str]) -> bool:
    if obj_labels.get(OWNER_HOST_LABEL) != socket.gethostname():
        return False
    try:
        pid = int(obj_labels.get(OWNER_PID_LABEL, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def label_filter(run_id: str | None = None) -> dict[str, list[str]]:
    """Docker filters for this lab's objects (of one run, or of all its runs)."""
    return {"label": [f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL, f"{LAB_LABEL}={lab_id()}"]}


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
        if not _owner_alive(obj_labels):
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
                with contextlib.suppress(docker.errors.NotFound):
                    v.remove(force=True)
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


UNMASK_SYSTEM_PATHS = "systempaths=unconfined"


def create_container(client: docker.DockerClient, **kwargs: Any) -> Container:
    """``client.containers.create`` that also understands ``systempaths=unconfined``.

    That security option exists only in the docker CLI, which turns it into empty
    ``MaskedPaths``/``ReadonlyPaths``; the engine API rejects it and the SDK has no
    argument for those two fields, so they are set on the host config here.
    """
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
