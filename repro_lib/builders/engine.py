"""Docker Engine's built-in BuildKit with an inline cache (``--cache-from``).

The Docker SDK cannot drive BuildKit builds, so ``docker build`` runs through
the CLI (``DOCKER_BUILDKIT=1``, ``--progress=plain``); pushes, image removal and
builder-cache pruning go through the SDK. A reset prunes the engine's whole
builder cache, so it is refused on an engine the lab did not start unless the
user passes ``allow_prune``.

Two batches on one engine (two users, or a batch and a bench) would prune each
other's state in the middle of a reset cycle, which makes ``since_reset`` a lie,
and dockerd 20.10 was seen to crash (a nil dereference in its BuildKit cache
manager) when a prune met another build's cache import. So a batch holds the
engine's lock from each reset to the next: cycles of different batches take
turns, and each cycle sees only its own builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .. import lab
from ..config import ENGINE_LABEL
from ..errors import BuildFailed, InfraError, MissingRequirement, PruneRefused, UsageError
from .base import (
    BatchEnv,
    BuildOutput,
    cache_import_error,
    count_cache_hits,
    count_cache_pulls,
    log_tail,
    register,
    step_times,
    write_log,
)

# The BuildKit that each Docker Engine release line vendors (moby's vendor.mod).
ENGINE_BUILDKIT = {
    "19.03": "v0.6",
    "20.10": "v0.8",
    "23.0": "v0.10",
    "24.0": "v0.11",
    "25.0": "v0.12",
    "26.0": "v0.13",
    "26.1": "v0.13",
    "27.0": "v0.14",
    "27.1": "v0.15",
    "27.2": "v0.15",
    "27.3": "v0.16",
    "27.4": "v0.17",
    "27.5": "v0.18",
    "28.0": "v0.20",
}


def engine_buildkit_version(engine_version: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", engine_version)
    if not m:
        return "unknown"
    major, minor = m.groups()
    return ENGINE_BUILDKIT.get(f"{major}.{minor}") or ENGINE_BUILDKIT.get(f"{major}.0", "unknown")


def engine_is_lab_owned(engine_labels: tuple[str, ...] | list[str]) -> bool:
    return any(label.startswith(f"{ENGINE_LABEL}=") for label in engine_labels)


def refuse_unowned_engine(client: docker.DockerClient, *, allow_prune: bool) -> lab.HostFacts:
    """The engine's facts, once it is known that the engine backend may prune it.

    Raises:
        PruneRefused: the lab did not start this engine and pruning was not allowed.
    """
    facts = lab.HostFacts.of(client)
    if not (allow_prune or engine_is_lab_owned(facts.engine_labels)):
        raise PruneRefused(
            "the engine backend prunes the builder cache at every reset, and this engine "
            "was not started by the lab",
            hint="use `repro-lib engine start` and --engine-host, or pass --allow-prune",
        )
    return facts


def find_docker_cli(explicit: str | None = None) -> str:
    """A docker CLI that can run BuildKit builds against the engine.

    CLI 23 and later need the buildx plugin for ``DOCKER_BUILDKIT=1``; older ones
    (Debian's 20.10) drive the engine's BuildKit themselves.

    Raises:
        MissingRequirement: no usable CLI was found.
    """
    candidates = [explicit] if explicit else [shutil.which("docker"), "/usr/bin/docker"]
    tried = []
    for cli in dict.fromkeys(c for c in candidates if c):
        if not (os.path.isfile(cli) and os.access(cli, os.X_OK)):
            tried.append(f"{cli} (absent)")
            continue
        try:
            text = subprocess.run(
                [cli, "--version"], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            tried.append(f"{cli} (does not run)")
            continue
        m = re.search(r"version (\d+)\.", text)
        major = int(m.group(1)) if m else 0
        if major and major < 23:
            return cli
        probe = subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=20)
        if probe.returncode == 0:
            return cli
        tried.append(f"{cli} ({text.strip()} without buildx)")
    raise MissingRequirement(
        "no docker CLI that can run BuildKit builds: " + "; ".join(tried),
        hint="install the buildx plugin or pass --docker-cli /usr/bin/docker (Debian's docker.io)",
    )


class EngineLock:
    """An exclusive lock on one engine's builder cache, shared by every process on this host."""

    def __init__(self, engine_host: str) -> None:
        digest = hashlib.sha256(engine_host.encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"repro-lib-engine-{digest}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other batch's cycle to end
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


@register("engine")
class EngineBackend:
    """The engine's BuildKit, inline cache pushed to the lab's cache registry.

    Args:
        allow_prune: prune the builder cache even on an engine the lab did not start.
        docker_cli: path of the docker CLI (default: the first one that can build).
        cache_ref: reuse an inline-cache image pushed by an earlier run.
    """

    name = "engine"
    mode = "engine"
    cache_type = "inline"
    privileged = False
    security: dict[str, Any] = {}  # no BuildKit container of ours: the engine's own settings apply
    cache_types = ("inline",)
    features = frozenset({"inline-cache"})  # no mirror: the engine builds FROM its own images

    @classmethod
    def from_options(cls, options: Any) -> EngineBackend:
        return cls(
            allow_prune=options.allow_prune,
            docker_cli=options.docker_cli,
            cache_ref=options.cache_ref,
            output=options.output,
            build_timeout=options.build_timeout,
            image=options.image,
            cache_image=options.cache_image,
        )

    def __init__(
        self,
        *,
        allow_prune: bool = False,
        docker_cli: str | None = None,
        cache_ref: str | None = None,
        output: str = "tar",
        build_timeout: float = 600,
        image: str | None = None,
        cache_image: str | None = None,
    ) -> None:
        if output != "tar":
            # Engine 20.10's built-in BuildKit has no OCI exporter; a tar is what all engines give.
            raise UsageError("the engine backend writes --output tar only")
        if cache_image and cache_image != image:
            raise UsageError("--cache-image applies to the container backend only")
        self.allow_prune = allow_prune
        self.docker_cli = docker_cli
        self.cache_ref = cache_ref
        self.output = output
        self.build_timeout = build_timeout
        self.image = self.cache_image = "engine"
        self.version = self.cache_version = "engine"
        self.buildkit_version = "unknown"
        self.env: BatchEnv | None = None
        self.cli = ""
        self.context_dir: Path | None = None
        self.lock: EngineLock | None = None

    def prepare(self, env: BatchEnv, *, lane: int = 0) -> None:
        self.env = env
        facts = refuse_unowned_engine(env.client, allow_prune=self.allow_prune)
        self.cli = find_docker_cli(self.docker_cli)
        self.lock = EngineLock(lab.engine_host_of(env.client))
        self.image = self.cache_image = f"engine:{facts.engine_version}"
        self.version = self.cache_version = f"engine-{facts.engine_version}"
        self.buildkit_version = engine_buildkit_version(facts.engine_version)
        for base in env.scenario.base_images():
            lab.ensure_image(env.client, base, offline=env.offline)
        self.context_dir = env.scenario.write_to(env.work_dir / f"context-l{lane}")

    @property
    def cache_location(self) -> str:
        assert self.env is not None
        return self.cache_ref or f"{self.env.cache_repo}:inline"

    # the three verbs ----------------------------------------------------------
    def export_cache(self) -> BuildOutput:
        env = self.env
        assert env is not None
        self.reset()
        ref = self.cache_location
        args = ["--build-arg", "BUILDKIT_INLINE_CACHE=1", "-t", ref]
        out = self._docker_build(args, "export")
        t0 = time.monotonic()
        try:
            lab.push_image(env.client, ref, ref)
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                env.client.images.remove(ref, force=True)
        out.phases["push"] = time.monotonic() - t0
        return out

    def reset(self) -> None:
        env = self.env
        assert env is not None and self.lock is not None
        if self.lock.held:
            self.lock.release()  # between two cycles another batch may take its turn
            time.sleep(0.05)
        self.lock.acquire()
        try:
            for image in env.client.images.list(filters=lab.label_filter(env.label_id)):
                with contextlib.suppress(docker.errors.NotFound):
                    env.client.images.remove(image.id, force=True)
            env.client.api.prune_builds(all=True)
        except docker.errors.DockerException as exc:
            raise InfraError(
                f"cannot reset the engine's builder cache: {lab.describe_docker_error(exc)}"
            ) from exc

    def build(self, trial: int) -> BuildOutput:
        env = self.env
        assert env is not None
        tag = f"trial-{trial:04d}"
        outdir = env.work_dir / "outputs"
        outdir.mkdir(parents=True, exist_ok=True)
        dest = outdir / f"{tag}.tar"
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        args = ["--cache-from", self.cache_location, "-o", f"type={self.output},dest={dest}"]
        out = self._docker_build(args, tag)
        out.tarball = dest if dest.exists() else None
        return out

    def close(self) -> None:
        env = self.env
        if self.lock is None:
            return  # never prepared (e.g. pruning refused): nothing of ours to prune
        if env is not None and not env.keep:
            with contextlib.suppress(InfraError):
                self.reset()
        self.lock.release()

    # the CLI call ----------------------------------------------------------------
    def _docker_build(self, extra: list[str], tag: str) -> BuildOutput:
        env = self.env
        assert env is not None and self.context_dir is not None
        cmd = [self.cli, "build", "--progress=plain", "--network", "host"]
        for key, value in lab.labels(env.label_id, keep=env.keep).items():
            cmd += ["--label", f"{key}={value}"]
        for key, value in env.scenario.build_args().items():
            cmd += ["--build-arg", f"{key}={value}"]
        cmd += extra + [str(self.context_dir)]
        child_env = dict(
            os.environ, DOCKER_BUILDKIT="1", DOCKER_HOST=lab.engine_host_of(env.client)
        )
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, env=child_env, capture_output=True, text=True, timeout=self.build_timeout
            )
        except subprocess.TimeoutExpired as exc:
            log = (
                (exc.stderr or b"").decode(errors="replace")
                if isinstance(exc.stderr, bytes)
                else (exc.stderr or "")
            )
            write_log(env, f"{tag}.log", f"# {' '.join(cmd)}\n{log}")
            raise BuildFailed(
                f"docker build timed out after {self.build_timeout:.0f}s", log_tail=log_tail(log)
            ) from None
        except OSError as exc:
            raise MissingRequirement(f"cannot run {self.cli}: {exc}") from exc
        duration = time.monotonic() - started
        log = proc.stdout + proc.stderr
        write_log(env, f"{tag}.log", f"# {' '.join(cmd)}\n{log}")
        if proc.returncode != 0:
            if _engine_trouble(log):
                raise InfraError(f"engine unavailable during build: {log_tail(log, 1)}", logs=log)
            raise BuildFailed(
                f"docker build exited {proc.returncode}: {log_tail(log, 1)}",
                log_tail=log_tail(log),
                exit_code=proc.returncode,
            )
        if "--cache-from" in extra and (error := cache_import_error(log)):
            raise InfraError(
                f"cache import failed, the try did not use the cache: {error}", logs=log
            )
        hits, steps = count_cache_hits(log)
        return BuildOutput(
            None,
            log,
            duration,
            cache_hits=hits,
            cache_steps=steps,
            cache_pulled=count_cache_pulls(log),
            phases={"build": duration, **step_times(log)},
        )


def _engine_trouble(log: str) -> bool:
    """Whether a failed ``docker build`` failed because the engine was away, not BuildKit."""
    low = log.lower()
    markers = (
        "cannot connect to the docker daemon",
        "error during connect",
        "failed to dial grpc",
        "connection refused",
    )
    return any(m in low for m in markers)
