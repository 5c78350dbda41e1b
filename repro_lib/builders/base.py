"""What every backend shares: the batch environment, the :class:`Backend` protocol,
the registry of backends by name, and the readers of BuildKit's build log.

Backend modules import this one and register themselves; the package imports
the backends, so the arrow goes one way.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UsageError
from ..lab import wait_until

if TYPE_CHECKING:
    import docker

    from ..lab import Registry
    from ..scenario import Scenario


@dataclass
class BatchEnv:
    """What every backend of one batch shares: engine, registries, scenario, places."""

    client: docker.DockerClient
    run_id: str
    scenario: Scenario
    cache_registry: Registry
    mirror: Registry | None
    work_dir: Path  # data/runs/<run id>: logs, outputs, local cache
    offline: bool = True
    keep: bool = False  # --no-cleanup
    label_id: str = ""  # the session (run or sweep) every object is labelled with

    def __post_init__(self) -> None:
        if not self.label_id:
            self.label_id = self.run_id

    def wait_healthy(self, timeout: float = 90) -> None:
        """Wait until the engine answers and the lab's registries serve again.

        Raises:
            InfraError: they did not come back within ``timeout``.
        """
        wait_until(
            self.client.ping,
            timeout=timeout,
            interval=0.5,
            what="Docker engine",
            transient=(Exception,),
        )
        for registry in (self.cache_registry, self.mirror):
            if registry is not None and hasattr(registry, "answers_http"):
                registry.ensure_coming_back()
                wait_until(
                    registry.answers_http,
                    timeout=timeout,
                    interval=0.5,
                    what=f"{registry.role} registry",
                    transient=(Exception,),
                )

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def cache_repo(self) -> str:
        return f"{self.cache_registry.address}/repro-lib/{self.run_id}"


@dataclass
class BuildOutput:
    """What one build produced: its tarball (if any), log and cache evidence."""

    tarball: Path | None
    log: str
    duration_s: float
    cache_hits: int | None = None
    cache_steps: int | None = None
    cache_pulled: int | None = None
    phases: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """The smallest thing that knows how to run the experiment's builds."""

    name: str
    image: str
    version: str
    cache_image: str
    cache_version: str
    cache_type: str
    mode: str
    privileged: bool
    security: dict[str, Any]  # effective container security flags, recorded per trial
    buildkit_version: str
    features: frozenset[str]  # which of FEATURES the backend supports
    cache_types: tuple[str, ...]  # the first is the default

    def prepare(self, env: BatchEnv, *, lane: int = 0) -> None:
        """Check requirements and set up state; raise MissingRequirement or UsageError."""

    def export_cache(self) -> BuildOutput:
        """Build the scenario once from scratch and export its cache."""

    def reset(self) -> None:
        """Start from a fresh BuildKit state for the next try."""

    def build(self, trial: int) -> BuildOutput:
        """Build with the cache imported; the tarball lands under the run's work dir."""

    def close(self) -> None:
        """Remove everything this backend made (unless the batch keeps it)."""


BACKENDS: dict[str, Callable[..., Backend]] = {}
FEATURES = frozenset(
    {
        "registry-cache",
        "local-cache",
        "inline-cache",
        "daemon-mode",
        "oci-output",
        "mirror",
        "security-flags",
    }
)


def supports(backend: Any, feature: str) -> bool:
    """Whether a backend (class or instance) supports ``feature``.

    Raises:
        ValueError: ``feature`` is not a known feature name (a typo must not read as "no").
    """
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}")
    return feature in backend.features


def register(name: str) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def deco(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        BACKENDS[name] = factory
        return factory

    return deco


def backend_class(name: str) -> Any:
    """The registered backend class called ``name``.

    Each class has ``cache_types`` and a ``from_options(BatchOptions)`` constructor.
    """
    if name not in BACKENDS:
        load_plugins()
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"unknown backend {name!r}", hint=f"choose one of: {', '.join(sorted(BACKENDS))}"
        ) from None


_VERSION_RE = re.compile(r":(v\d+\.\d+\.\d+[^-@]*)")


def version_of_image(image: str) -> str:
    """``moby/buildkit:v0.9.0-rootless`` -> ``v0.9.0``; otherwise the tag itself."""
    m = _VERSION_RE.search(image)
    if m:
        return m.group(1)
    return image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"


_STEP_RE = re.compile(r"^#(\d+) \[(?!internal\])[^\]]*\] (.*)$")
_CACHED_RE = re.compile(r"^#(\d+) CACHED\s*$")
_PULL_RE = re.compile(r"^#\d+ pulling sha256:[0-9a-f]+")


def count_cache_hits(log: str) -> tuple[int, int]:
    """Count (cached, cacheable) Dockerfile steps in a ``--progress=plain`` log.

    ``FROM`` steps resolve an image rather than run, so they are not cacheable steps.
    """
    steps, cached = set(), set()
    for line in log.splitlines():
        m = _STEP_RE.match(line.strip())
        if m and not m.group(2).startswith("FROM "):
            steps.add(m.group(1))
        m = _CACHED_RE.match(line.strip())
        if m:
            cached.add(m.group(1))
    return len(cached & steps), len(steps)


_STEP_TITLE_RE = re.compile(r"^#(\d+) (?!sha256:|DONE|CACHED|ERROR)(.+)$")
_STEP_DONE_RE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s")


def step_times(log: str) -> dict[str, float]:
    """Seconds BuildKit reports for importing the cache and exporting the result."""
    titles: dict[str, str] = {}
    out = {"cache_import": 0.0, "export": 0.0}
    for line in log.splitlines():
        line = line.strip()
        m = _STEP_TITLE_RE.match(line)
        if m and m.group(1) not in titles:
            titles[m.group(1)] = m.group(2)
            continue
        m = _STEP_DONE_RE.match(line)
        if m:
            title = titles.get(m.group(1), "")
            if title.startswith("importing cache"):
                out["cache_import"] += float(m.group(2))
            elif title.startswith("exporting"):
                out["export"] += float(m.group(2))
    return out


_IMPORT_ERROR_RE = re.compile(r"^#(\d+) ERROR: (.*)$")


def cache_import_error(log: str) -> str | None:
    """The error of a failed cache import, if the log shows one.

    BuildKit carries on without the cache when its import fails, so such a try
    says nothing about the bug: the caller records it as an infra error.
    """
    titles: dict[str, str] = {}
    for line in log.splitlines():
        line = line.strip()
        m = _STEP_TITLE_RE.match(line)
        if m and m.group(1) not in titles:
            titles[m.group(1)] = m.group(2)
        m = _IMPORT_ERROR_RE.match(line)
        if m and titles.get(m.group(1), "").startswith("importing cache"):
            return m.group(2)[:300]
    return None


_PULL_FAILURES = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "unexpected status code",
    "failed to do request",
    "not found",
    "eof",
)


def base_pull_error(log: str, base_images: list[str]) -> str | None:
    """The error of a failed base-image pull, if the log shows one.

    When the upstream of the mirror is gone, a base image (or layer) the mirror
    never fetched cannot come: the try could not even start its build, so it is
    infrastructure trouble, never evidence about the cache.
    """
    names = set()
    for image in base_images:
        ref = image.split("@")[0]
        repo = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
        names |= {ref, repo if "/" in repo else f"library/{repo}"}
    for line in log.splitlines():
        low = line.lower()
        if "failed to resolve source metadata" in low:
            return " ".join(line.split())[:300]
        failed = "error" in low or "failed" in low
        if failed and any(n in line for n in names) and any(f in low for f in _PULL_FAILURES):
            return " ".join(line.split())[:300]
    return None


def count_cache_pulls(log: str) -> int:
    """Blobs pulled while importing the cache: non-zero only when the local state was empty."""
    return sum(bool(_PULL_RE.match(line.strip())) for line in log.splitlines())


def write_log(env: BatchEnv, name: str, text: str) -> Path:
    env.logs_dir.mkdir(parents=True, exist_ok=True)
    path = env.logs_dir / name
    path.write_text(text)
    return path


def log_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def load_plugins() -> None:
    """Import extra backend modules named in ``REPRO_LIB_BACKEND_MODULES`` (comma-separated).

    A module registers its backend with :func:`register` on import, so a third
    backend needs no change here.
    """
    for name in filter(None, os.environ.get("REPRO_LIB_BACKEND_MODULES", "").split(",")):
        try:
            importlib.import_module(name.strip())
        except ImportError as exc:
            raise UsageError(f"cannot import backend module {name!r}: {exc}") from exc
