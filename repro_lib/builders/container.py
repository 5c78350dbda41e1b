"""BuildKit in a container from a ``moby/buildkit`` image, as the public script runs it.

``daemonless`` mode starts ``buildctl-daemonless.sh`` for every try (a fresh
``buildkitd`` each time, state kept in a volume); ``daemon`` mode keeps one
``buildkitd`` container per reset cycle and runs each try with ``buildctl``
inside it. The context, config and outputs move through the Docker archive API,
so no host directory has to be shared with the unprivileged BuildKit user.
What each container is given (security flags, mounts, entrypoint) is worked
out in :mod:`repro_lib.builders.container_flags`; this module runs the tries.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from .. import lab
from ..errors import BuildFailed, InfraError, UsageError
from .base import (
    BatchEnv,
    BuildOutput,
    base_pull_error,
    cache_import_error,
    count_cache_hits,
    log_tail,
    register,
    step_times,
    version_of_image,
    write_log,
)
from .container_flags import (
    WEAK_OPTION,
    create_kwargs,
    is_rootless,
    refusal,
    security_profile,
)

STAGE = "/tmp/repro-lib"
CONTEXT_DIR = f"{STAGE}/ctx"
OUTPUT_DIR = f"{STAGE}/out"
CACHE_DIR = f"{STAGE}/cache"
CONFIG_PATH = f"{STAGE}/config.toml"
OUTPUT_TYPES = ("tar", "oci")
MODES = ("daemonless", "daemon")
CACHE_TYPES = ("registry", "local")


def buildkitd_config(mirror: str | None, insecure_hosts: list[str]) -> str:
    """buildkitd ``config.toml``: docker.io through the mirror, lab registries over plain http."""
    lines = []
    if mirror:
        lines += ['[registry."docker.io"]', f'  mirrors = ["{mirror}"]', ""]
    for host in dict.fromkeys(([mirror] if mirror else []) + insecure_hosts):
        lines += [f'[registry."{host}"]', "  http = true", "  insecure = true", ""]
    return "\n".join(lines)


@register("container")
class ContainerBackend:
    """BuildKit from a ``moby/buildkit`` image.

    Args:
        image: the image that imports the cache (``moby/buildkit:v0.9.0-rootless``).
        cache_image: the image that exports it (default: ``image``).
        cache_type: ``registry`` or ``local``.
        mode: ``daemonless`` (public script) or ``daemon`` (one buildkitd per reset cycle).
        privileged: run BuildKit ``--privileged``; default: only for rootful images.
        security_opt: container security options; default: the public script's
            ``seccomp=unconfined``/``apparmor=unconfined`` for rootless images.
        cap_add / cap_drop: capabilities added to / dropped from the BuildKit container.
        rootful_weak_isolation: run rootful images without ``--privileged`` but with
            every capability the host allows, no seccomp/AppArmor confinement, unmasked
            system paths and (cgroup v1) the host's cgroup tree writable. Weaker isolation,
            chosen explicitly and recorded per trial.
        command: the command line of the batch, to print one that works when refused.
        buildkitd_flags: extra flags for buildkitd.
        output: ``tar`` (a flattened rootfs) or ``oci`` (an OCI image with layers).
        cache_ref / cache_dir: reuse a cache left by an earlier run (``--skip-create-cache``).
    """

    name = "container"
    cache_types = CACHE_TYPES
    # "mirror": BuildKit in a container pulls the base image through the lab's mirror
    features = frozenset(
        {"registry-cache", "local-cache", "daemon-mode", "oci-output", "mirror", "security-flags"}
    )

    @classmethod
    def from_options(cls, options: Any) -> ContainerBackend:
        return cls(
            options.image,
            cache_image=options.cache_image,
            cache_type=options.cache,
            mode=options.mode,
            privileged=options.privileged,
            security_opt=options.security_opt,
            cap_add=options.cap_add,
            cap_drop=options.cap_drop,
            rootful_weak_isolation=options.rootful_weak_isolation,
            command=options.command,
            buildkitd_flags=(
                f"{options.buildkitd_flags} --debug".strip()
                if getattr(options, "debug_failures", False)
                else options.buildkitd_flags
            ),
            output=options.output,
            cache_ref=options.cache_ref,
            cache_dir=options.cache_dir,
            build_timeout=options.build_timeout,
        )

    def __init__(
        self,
        image: str,
        *,
        cache_image: str | None = None,
        cache_type: str = "registry",
        mode: str = "daemonless",
        privileged: bool | None = None,
        security_opt: list[str] | None = None,
        cap_add: list[str] | None = None,
        cap_drop: list[str] | None = None,
        rootful_weak_isolation: bool = False,
        command: str = "",
        buildkitd_flags: str = "",
        output: str = "tar",
        cache_ref: str | None = None,
        cache_dir: str | Path | None = None,
        build_timeout: float = 600,
        startup_timeout: float = 60,
    ) -> None:
        if cache_type not in CACHE_TYPES:
            raise UsageError(f"cache type {cache_type!r} needs one of {', '.join(CACHE_TYPES)}")
        if mode not in MODES:
            raise UsageError(f"mode {mode!r} needs one of {', '.join(MODES)}")
        if output not in OUTPUT_TYPES:
            raise UsageError(f"output {output!r} needs one of {', '.join(OUTPUT_TYPES)}")
        self.image = image
        self.cache_image = cache_image or image
        self.version = version_of_image(self.image)
        self.cache_version = version_of_image(self.cache_image)
        self.cache_type = cache_type
        self.mode = mode
        self.output = output
        self.buildkit_version = self.version
        self._privileged_opt = privileged
        self._security_opt = security_opt
        self._cap_add = list(cap_add or [])
        self._cap_drop = list(cap_drop or [])
        self.weak_isolation = rootful_weak_isolation
        self.command = command
        self.security: dict[str, Any] = {}
        self._cgroups: str | None = None
        self.buildkitd_flags = buildkitd_flags
        self.cache_ref = cache_ref
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.build_timeout = build_timeout
        self.startup_timeout = startup_timeout
        self.privileged = False
        self.env: BatchEnv | None = None
        self.lane = 0
        self.state: lab.StateVolume | None = None
        self.daemon: docker.models.containers.Container | None = None
        self._cycle = 0
        # daemon mode drives buildkitd from the host with the image's own buildctl;
        # None until tried, then a path, or "" when it cannot run here (docker exec then)
        self.host_buildctl: Path | str | None = None
        self.buildctl_via = ""  # "host" | "exec": how daemon-mode builds reached buildkitd
        self.daemon_addr = ""

    # setup ---------------------------------------------------------------
    def prepare(self, env: BatchEnv, *, lane: int = 0) -> None:
        self.env, self.lane = env, lane
        for image in dict.fromkeys([self.image, self.cache_image]):
            lab.ensure_image(env.client, image, offline=env.offline)
        if self.cache_type == "local" and self.cache_dir is None:
            self.cache_dir = env.work_dir / "cache"
        if self.weak_isolation and not any(
            not is_rootless(i, env.client.images.get(i).attrs)
            for i in dict.fromkeys([self.image, self.cache_image])
        ):
            raise UsageError(
                f"{WEAK_OPTION} is for rootful BuildKit images; {self.image} is rootless",
                hint=f"drop {WEAK_OPTION} (rootless images need no privileges)",
            )
        self.state = lab.StateVolume(
            env.client, env.run_id, lane=lane, keep=env.keep, label_id=env.label_id
        )

    def _profile(self, image: str) -> dict[str, Any]:
        """Path of the state volume and the security flags for one image."""
        return security_profile(
            image,
            self.env.client.images.get(image).attrs,  # type: ignore[union-attr]
            privileged=self._privileged_opt,
            security_opt=self._security_opt,
            cap_add=self._cap_add,
            cap_drop=self._cap_drop,
            weak_isolation=self.weak_isolation,
            buildkitd_flags=self.buildkitd_flags,
            config_path=CONFIG_PATH,
            cgroup_version=self._cgroup_version,
        )

    def _cgroup_version(self) -> str:
        """The engine host's cgroup version ("1" or "2"); the engine may be remote."""
        if self._cgroups is None:
            try:
                info = self.env.client.info()  # type: ignore[union-attr]
            except docker.errors.DockerException as exc:
                raise InfraError(f"cannot query the engine: {exc}") from exc
            self._cgroups = str(info.get("CgroupVersion") or "1")
        return self._cgroups

    @property
    def cache_location(self) -> str:
        env = self.env
        assert env is not None
        if self.cache_type == "registry":
            return self.cache_ref or f"{env.cache_repo}:cache"
        return str(self.cache_dir)

    def _config(self) -> bytes:
        env = self.env
        assert env is not None
        hosts = [env.cache_registry.address]
        if self.cache_ref:
            hosts.append(self.cache_ref.split("/", 1)[0])
        return buildkitd_config(env.mirror.address if env.mirror else None, hosts).encode()

    def _staging_tar(self) -> bytes:
        env = self.env
        assert env is not None
        files = {f"{CONTEXT_DIR}/{name}": data for name, data in env.scenario.files.items()}
        files[CONFIG_PATH] = self._config()
        buf = io.BytesIO(lab.tar_of(files, dirs=[OUTPUT_DIR, CACHE_DIR]))
        if self.cache_type == "local" and self.cache_dir and self.cache_dir.is_dir():
            # Append the exported local cache to the same archive.
            data = io.BytesIO(buf.getvalue())
            out = io.BytesIO()
            with tarfile.open(fileobj=data) as src, tarfile.open(fileobj=out, mode="w") as dst:
                for m in src.getmembers():
                    dst.addfile(m, src.extractfile(m) if m.isfile() else None)
                for path in sorted(self.cache_dir.rglob("*")):
                    arc = f"{CACHE_DIR}/{path.relative_to(self.cache_dir)}"
                    info = dst.gettarinfo(str(path), arcname=arc.lstrip("/"))
                    info.uid = info.gid = 0
                    info.mode = 0o755 if path.is_dir() else 0o644
                    if path.is_file():
                        with path.open("rb") as f:
                            dst.addfile(info, f)
                    else:
                        dst.addfile(info)
            return out.getvalue()
        return buf.getvalue()

    # buildctl arguments ---------------------------------------------------
    def _build_args(self, *, export: bool, dest: str) -> list[str]:
        env = self.env
        assert env is not None
        args = [
            "build",
            "--progress",
            "plain",  # the step log that cache hits are counted from
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={CONTEXT_DIR}",
            "--local",
            f"dockerfile={CONTEXT_DIR}",
        ]
        for key, value in env.scenario.build_args().items():
            args += ["--opt", f"build-arg:{key}={value}"]
        if export:
            if self.cache_type == "registry":
                args += ["--export-cache", f"type=registry,ref={self.cache_location},mode=max"]
            else:
                args += ["--export-cache", f"type=local,dest={CACHE_DIR},mode=max"]
        elif self.cache_type == "registry":
            args += ["--import-cache", f"type=registry,ref={self.cache_location}"]
        else:
            args += ["--import-cache", f"type=local,src={CACHE_DIR}"]
        args += ["--output", f"type={self.output},dest={dest}"]
        return args

    def container_kwargs(
        self, image: str, command: list[str], role: str, name: str
    ) -> dict[str, Any]:
        """Everything ``containers.create`` gets for one BuildKit container."""
        env = self.env
        assert env is not None and self.state is not None
        profile = self._profile(image)
        self.privileged = profile["privileged"]
        self.security = {
            k: profile[k]
            for k in (
                "privileged",
                "cap_add",
                "cap_drop",
                "security_opt",
                "mounts",
                "weak_isolation",
            )
        }
        return create_kwargs(
            image,
            command,
            name=name,
            role=role,
            profile=profile,
            state_volume=self.state.name,
            labels=lab.role_labels(env.label_id, role, keep=env.keep),
            daemon_addr=self.daemon_addr,
        )

    # the three verbs --------------------------------------------------------
    def export_cache(self) -> BuildOutput:
        self.reset()
        image = self.cache_image
        dest = f"{OUTPUT_DIR}/export.tar"
        out = self._run_once(image, self._build_args(export=True, dest=dest), "export", dest)
        if self.cache_type == "local":
            self._copy_cache_out()
        return out

    def reset(self) -> None:
        assert self.state is not None
        self._stop_daemon()
        self.state.reset()
        self._cycle += 1

    def build(self, trial: int) -> BuildOutput:
        dest = f"{OUTPUT_DIR}/out-{trial}.tar"
        args = self._build_args(export=False, dest=dest)
        if self.mode == "daemon":
            return self._run_in_daemon(trial)
        return self._run_once(self.image, args, f"trial-{trial:04d}", dest)

    def close(self) -> None:
        self._stop_daemon()
        if self.state is not None:
            self.state.remove()

    # daemonless ----------------------------------------------------------------
    def _run_once(self, image: str, args: list[str], tag: str, dest: str) -> BuildOutput:
        env = self.env
        assert env is not None
        name = f"{lab.NAME_PREFIX}-{env.run_id}-l{self.lane}-{tag}"
        kwargs = self.container_kwargs(image, args, "buildkit", name)
        started = time.monotonic()
        phases: dict[str, float] = {}
        container = None
        try:
            container = lab.create_container(env.client, **kwargs)
            container.put_archive("/", self._staging_tar())
            t0 = time.monotonic()
            container.start()
            phases["container_start"] = time.monotonic() - t0
            t0 = time.monotonic()
            try:
                status = container.wait(timeout=self.build_timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                with contextlib.suppress(docker.errors.DockerException):
                    container.kill()
                log = self._logs(container)
                path = write_log(env, f"{tag}.log", self._header(kwargs) + log)
                raise BuildFailed(
                    f"build timed out after {self.build_timeout:.0f}s (log: {path})",
                    log_tail=log_tail(log),
                ) from None
            phases["build"] = time.monotonic() - t0
            log = self._logs(container)
            path = write_log(env, f"{tag}.log", self._header(kwargs) + log)
            code = status.get("StatusCode", -1)
            if code != 0:
                if refused := refusal(log, kwargs, self.command):
                    raise refused
                self._check_base_pull(log)
                raise BuildFailed(
                    f"buildctl exited {code}: {_reason(log)} (log: {path})",
                    log_tail=log_tail(log),
                    exit_code=code,
                )
            _check_cache_import(args, log)
            t0 = time.monotonic()
            tarball = self._fetch_output(container, dest, tag)
            phases["copy_out"] = time.monotonic() - t0
            if tag == "export" and self.cache_type == "local":
                self._export_container = container
                container = None  # kept until the cache is copied out
            phases.update(step_times(log))
            return _output(tarball, log, time.monotonic() - started, phases)
        except docker.errors.ImageNotFound as exc:
            raise InfraError(f"image {image} vanished: {lab.describe_docker_error(exc)}") from exc
        except docker.errors.DockerException as exc:
            text = lab.describe_docker_error(exc)
            if refused := refusal(text, kwargs, self.command):
                raise refused from exc
            raise InfraError(f"BuildKit container failed: {text}") from exc
        finally:
            if container is not None and not env.keep:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)

    def _copy_cache_out(self) -> None:
        env = self.env
        assert env is not None and self.cache_dir is not None
        container = getattr(self, "_export_container", None)
        if container is None:
            return
        try:
            self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_dir.parent / "cache-export"
            tmp.mkdir(exist_ok=True)
            lab.copy_out(container, CACHE_DIR, str(tmp))
            (tmp / "cache").rename(self.cache_dir)
            tmp.rmdir()
        except (OSError, docker.errors.DockerException) as exc:
            raise InfraError(f"cannot copy the local cache out: {exc}") from exc
        finally:
            self._export_container = None
            if not env.keep:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)

    def _fetch_output(self, container: Any, dest: str, tag: str) -> Path | None:
        env = self.env
        assert env is not None
        outdir = env.work_dir / "outputs"
        outdir.mkdir(parents=True, exist_ok=True)
        try:
            lab.copy_out(container, dest, str(outdir))
        except FileNotFoundError:
            return None
        produced = outdir / Path(dest).name
        final = outdir / f"{tag}.tar"
        produced.replace(final)
        return final

    @staticmethod
    def _logs(container: Any) -> str:
        try:
            return container.logs(stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.DockerException as exc:
            return f"(logs unavailable: {exc})"

    @staticmethod
    def _header(kwargs: dict[str, Any]) -> str:
        return f"# container: {lab.container_kwargs_for_log(kwargs)}\n"

    def _check_base_pull(self, log: str) -> None:
        """A base image the mirror cannot give (cold miss, upstream gone) is infra trouble."""
        env = self.env
        assert env is not None
        if error := base_pull_error(log, env.scenario.base_images()):
            raise InfraError(f"the base image could not be pulled through the mirror: {error}")

    # daemon mode ---------------------------------------------------------------
    def _host_buildctl(self) -> Path | str:
        """The image's own buildctl, copied out once per batch, if it runs on this host.

        Client and daemon versions then always match. "" when it cannot run here
        (another architecture, a dynamically linked build): builds use ``docker exec``.
        """
        if self.host_buildctl is not None:
            return self.host_buildctl
        env = self.env
        assert env is not None
        target = env.work_dir / "bin" / f"buildctl-{self.version}"
        self.host_buildctl = ""
        container = None
        try:
            container = env.client.containers.create(
                self.image,
                entrypoint=["true"],
                labels=lab.role_labels(env.label_id, "buildctl-copy", keep=False),
                network_mode="host",
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            lab.copy_out(container, "/usr/bin/buildctl", str(target.parent))
            (target.parent / "buildctl").rename(target)
            target.chmod(0o755)
            probe = subprocess.run([str(target), "--version"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                self.host_buildctl = target
        except (OSError, docker.errors.DockerException, subprocess.SubprocessError):
            pass
        finally:
            if container is not None:
                # v=True: the image's VOLUME gave this container an anonymous, unlabelled volume
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)
        return self.host_buildctl

    def _start_daemon(self) -> Any:
        env = self.env
        assert env is not None
        if self._host_buildctl():
            self.daemon_addr = f"tcp://127.0.0.1:{lab.free_port()}"
        name = f"{lab.NAME_PREFIX}-{env.run_id}-l{self.lane}-daemon-c{self._cycle}"
        kwargs = self.container_kwargs(self.image, [], "buildkit-daemon", name)
        daemon = None
        try:
            daemon = lab.create_container(env.client, **kwargs)
            daemon.put_archive("/", self._staging_tar())
            daemon.start()
        except docker.errors.DockerException as exc:
            text = lab.describe_docker_error(exc)
            if daemon is not None and not env.keep:
                with contextlib.suppress(docker.errors.DockerException):
                    daemon.remove(force=True, v=True)
            if refused := refusal(text, kwargs, self.command):
                raise refused from exc
            raise InfraError(f"cannot start buildkitd: {text}") from exc
        self.daemon = daemon

        def ready() -> bool:
            daemon.reload()
            if daemon.status in ("exited", "dead"):
                log = self._logs(daemon)
                if refused := refusal(log, kwargs, self.command):
                    raise refused
                raise InfraError(f"buildkitd exited: {log_tail(log, 3)}")
            if self.daemon_addr:
                # a TCP connect costs nothing; buildctl (a process per probe) only once it listens
                host, port = self.daemon_addr.removeprefix("tcp://").rsplit(":", 1)
                try:
                    socket.create_connection((host, int(port)), timeout=0.5).close()
                except OSError:
                    return False
                probe = subprocess.run(
                    [str(self.host_buildctl), "--addr", self.daemon_addr, "debug", "workers"],
                    capture_output=True,
                    timeout=10,
                )
                return probe.returncode == 0
            code, _ = daemon.exec_run(["buildctl", "debug", "workers"])
            return code == 0

        lab.wait_until(
            ready,
            timeout=self.startup_timeout,
            interval=0.02,
            what="buildkitd",
            transient=(OSError, docker.errors.APIError),
            logs=lambda: self._logs(daemon),
        )
        return daemon

    def daemon_log(self) -> str | None:
        """The running buildkitd's log (daemon mode); daemonless builds log into the build log."""
        return self._logs(self.daemon) if self.daemon is not None else None

    def _stop_daemon(self) -> None:
        if self.daemon is None:
            return
        env = self.env
        if env is not None and env.keep:
            self.daemon = None
            return
        with contextlib.suppress(docker.errors.DockerException):
            self.daemon.remove(force=True, v=True)
        self.daemon = None
        self.daemon_addr = ""

    def _run_in_daemon(self, trial: int) -> BuildOutput:
        env = self.env
        assert env is not None
        tag = f"trial-{trial:04d}"
        started = time.monotonic()
        phases: dict[str, float] = {}
        if self.daemon is None:
            t0 = time.monotonic()
            self._start_daemon()
            phases["daemon_start"] = time.monotonic() - t0
        outdir = env.work_dir / "outputs"
        outdir.mkdir(parents=True, exist_ok=True)
        tarball = outdir / f"{tag}.tar"
        t0 = time.monotonic()
        if self.daemon_addr:
            self.buildctl_via = "host"
            args = self._host_build_args(tarball)
            code, log = self._buildctl_on_host(args)
            header = f"# buildctl on the host -> {self.daemon_addr}: {shlex.join(args)}\n"
        else:
            # the daemon streams the result to stdout: no copy out of the container
            self.buildctl_via = "exec"
            args = self._build_args(export=False, dest="-")
            code, log, stdout = self._buildctl_exec(args)
            header = f"# exec in {self.daemon.name}: buildctl {shlex.join(args)}\n"
        phases["build"] = time.monotonic() - t0
        path = write_log(env, f"{tag}.log", header + log)
        if code != 0:
            self._check_base_pull(log)
            raise BuildFailed(
                f"buildctl exited {code}: {_reason(log)} (log: {path})",
                log_tail=log_tail(log),
                exit_code=code,
            )
        _check_cache_import(args, log)
        if not self.daemon_addr:
            t0 = time.monotonic()
            tarball.write_bytes(stdout or b"")
            phases["copy_out"] = time.monotonic() - t0
        phases.update(step_times(log))
        return _output(
            tarball if tarball.exists() else None, log, time.monotonic() - started, phases
        )

    def _host_build_args(self, tarball: Path) -> list[str]:
        """The same build as inside the container, with host paths for what the client reads
        and writes: the context, a local cache to import, and the output file."""
        env = self.env
        assert env is not None
        context = env.scenario.write_to(env.work_dir / f"context-l{self.lane}")
        args = self._build_args(export=False, dest=str(tarball))
        out = []
        for arg in args:
            if arg.startswith(("context=", "dockerfile=")):
                arg = arg.split("=", 1)[0] + f"={context}"
            elif arg == f"type=local,src={CACHE_DIR}":
                arg = f"type=local,src={self.cache_dir}"
            out.append(arg)
        return ["--addr", self.daemon_addr, *out]

    def _buildctl_on_host(self, args: list[str]) -> tuple[int, str]:
        try:
            proc = subprocess.run(
                [str(self.host_buildctl), *args],
                capture_output=True,
                timeout=self.build_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildFailed(
                f"build timed out after {self.build_timeout:.0f}s",
                log_tail=log_tail((exc.stderr or b"").decode(errors="replace")),
            ) from exc
        except OSError as exc:
            raise InfraError(f"cannot run buildctl on the host: {exc}") from exc
        return proc.returncode, proc.stderr.decode(errors="replace")

    def _buildctl_exec(self, args: list[str]) -> tuple[int, str, bytes]:
        assert self.daemon is not None
        try:
            code, (stdout, stderr) = self.daemon.exec_run(["buildctl", *args], demux=True)
        except docker.errors.DockerException as exc:
            raise InfraError(f"buildctl exec failed: {lab.describe_docker_error(exc)}") from exc
        return code, (stderr or b"").decode(errors="replace"), stdout or b""


def _output(
    tarball: Path | None, log: str, seconds: float, phases: dict[str, float]
) -> BuildOutput:
    hits, steps = count_cache_hits(log)
    if not steps:  # no step lines (an unexpected log format): cannot tell, rather than "no hits"
        return BuildOutput(tarball, log, seconds, phases=phases)
    return BuildOutput(tarball, log, seconds, phases=phases, cache_hits=hits, cache_steps=steps)


def _reason(log: str) -> str:
    """The most telling line of a failed BuildKit log: the first error, else the last line."""
    for line in log.splitlines():
        low = line.lower()
        if "error" in low or "failed" in low:
            return line.strip()[:300]
    return log_tail(log, 1)[:300]


def _check_cache_import(args: list[str], log: str) -> None:
    if "--import-cache" in args and (error := cache_import_error(log)):
        raise InfraError(f"cache import failed, the try did not use the cache: {error}", logs=log)
