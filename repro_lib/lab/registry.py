"""Where a registry is started: a labelled ``registry:2`` container on 127.0.0.1."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.volumes import Volume

from ..config import NAME_PREFIX
from ..errors import InfraError, MissingRequirement
from .net import free_port, port_is_free, wait_until
from .removal import make_way_for_container, make_way_for_volume, remove_volume
from .runs import role_labels

DEFAULT_REGISTRY_IMAGE = "registry:2"


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
            make_way_for_container(self.client, name)
            make_way_for_volume(self.client, f"{name}-data")
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
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                try:
                    self.container.remove(force=True, v=True)
                except docker.errors.DockerException as exc:
                    raise InfraError(f"cannot remove {self.container.name}: {exc}") from exc
        if self.volume is not None:
            remove_volume(self.volume)
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
