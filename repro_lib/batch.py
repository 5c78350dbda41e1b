"""One reproduction batch end to end: registries, mirror, cache export, the trial loop.

:class:`LabSession` owns what a batch (or a sweep's lanes) share: the cache
registry and the mirror. :func:`run_batch` runs one cell of trials on it.
Everything is labelled with the session id and removed when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker

from . import forensics, lab
from .builders import BatchEnv, backend_class, supports
from .config import Paths
from .errors import InfraError, UsageError
from .progress import BatchProgress
from .records import Outcome, TrialRecord, evidence
from .scenario import Scenario, load_scenario
from .stats import cycle_rate, records_frame
from .store import Store
from .trials import TrialContext, classify, positions_of_failures, run_trials, validate_counts

DOCKER_HUB = "https://registry-1.docker.io"
_CAPABILITY = re.compile(r"(CAP_)?[A-Za-z_]+")


@dataclass
class BatchOptions:
    """Every option of ``repro-lib reproduce`` (defaults are the public script's)."""

    backend: str = "container"
    image: str = "moby/buildkit:v0.9.0-rootless"
    cache_image: str | None = None
    tries: int = 20
    reset_freq: int = 4
    cache: str | None = None  # None: the backend's own (registry for container, inline for engine)
    mode: str = "daemonless"
    output: str = "tar"
    offline: bool = False
    no_cleanup: bool = False
    skip_create_cache: bool = False
    cache_ref: str | None = None
    cache_dir: str | None = None
    skip_tests: bool = False
    stop_on_failure: bool = False
    scenario: str | None = None
    base_image: str | None = None
    registry_image: str = lab.DEFAULT_REGISTRY_IMAGE
    privileged: bool | None = None
    security_opt: list[str] | None = None
    cap_add: list[str] | None = None
    cap_drop: list[str] | None = None
    rootful_weak_isolation: bool = False
    buildkitd_flags: str = ""
    hub_url: str = DOCKER_HUB  # the upstream the mirror proxies when online
    allow_prune: bool = False
    docker_cli: str | None = None
    build_timeout: float = 600
    debug_failures: bool = False  # buildkitd --debug for this batch, its log kept with failures
    command: str = ""  # the command line that started the batch, for reports

    def validate(self) -> None:
        validate_counts(self.tries, self.reset_freq)
        factory = backend_class(self.backend)
        # a plan file may give one capability as a plain string
        if isinstance(self.cap_add, str):
            self.cap_add = [self.cap_add]
        if isinstance(self.cap_drop, str):
            self.cap_drop = [self.cap_drop]
        for name, caps in (("--cap-add", self.cap_add), ("--cap-drop", self.cap_drop)):
            for cap in caps or ():
                if not _CAPABILITY.fullmatch(cap):
                    raise UsageError(
                        f"{name} {cap!r} is not a capability name",
                        hint="use names such as SYS_ADMIN, CAP_NET_ADMIN or ALL",
                    )
        if not self.hub_url.startswith(("http://", "https://")):
            raise UsageError(
                f"--hub-url {self.hub_url!r} needs a scheme",
                hint=f"e.g. --hub-url {DOCKER_HUB} or http://127.0.0.1:5000",
            )
        wants_flags = self.cap_add or self.cap_drop or self.rootful_weak_isolation
        if wants_flags and not supports(factory, "security-flags"):
            raise UsageError(
                f"--cap-add, --cap-drop and --rootful-weak-isolation apply to a BuildKit"
                f" container, which the {self.backend} backend does not run"
            )
        if self.rootful_weak_isolation and self.privileged:
            raise UsageError(
                "--rootful-weak-isolation replaces --privileged",
                hint="pass only one of them",
            )
        if self.cache is None:
            self.cache = factory.cache_types[0]
        if self.mode == "daemon" and not supports(factory, "daemon-mode"):
            raise UsageError(
                f"--mode daemon applies to a backend with its own daemon, not {self.backend}"
            )
        if self.output == "oci" and not supports(factory, "oci-output"):
            raise UsageError(f"the {self.backend} backend writes --output tar only")
        if self.cache not in factory.cache_types:
            raise UsageError(
                f"the {self.backend} backend takes --cache {' or '.join(factory.cache_types)}, not {self.cache}"
            )
        if self.skip_create_cache:
            if self.cache == "local" and not self.cache_dir:
                raise UsageError("--skip-create-cache with --cache local needs --cache-dir")
            if self.cache != "local" and not self.cache_ref:
                raise UsageError(
                    "--skip-create-cache needs --cache-ref (printed by a --no-cleanup run)"
                )
            if self.cache_dir and not Path(self.cache_dir).is_dir():
                raise UsageError(f"--cache-dir {self.cache_dir} does not exist")


@dataclass
class BatchSummary:
    run_id: str
    backend: str
    image: str
    cache_image: str
    cache_type: str
    mode: str
    reset_freq: int
    tries: int
    failures: int
    build_errors: int
    infra_errors: int
    no_cache_tries: int
    rate: float | None
    ci_low: float
    ci_high: float
    failure_positions: list[int]
    # the interval above treats reset cycles as clusters; Wilson's assumes independent tries
    cycles: int = 0
    wilson_low: float = 0.0
    wilson_high: float = 1.0
    stopped: str = ""
    work_dir: str = ""
    kept: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls, run_id: str, backend: Any, reset_freq: int, records: list[TrialRecord], **extra: Any
    ) -> BatchSummary:
        failures, counted = evidence(records)
        rate = cycle_rate(records_frame(records))  # reset cycles as clusters
        return cls(
            run_id=run_id,
            backend=backend.name,
            image=backend.image,
            cache_image=backend.cache_image,
            cache_type=backend.cache_type,
            mode=backend.mode,
            reset_freq=reset_freq,
            tries=len(records),
            failures=failures,
            build_errors=sum(r.outcome is Outcome.BUILD_ERROR for r in records),
            infra_errors=sum(r.outcome is Outcome.INFRA_ERROR for r in records),
            no_cache_tries=sum(r.cache_hits == 0 for r in records),
            rate=None if not counted else rate.p_hat,
            ci_low=rate.ci_low,
            ci_high=rate.ci_high,
            failure_positions=positions_of_failures(records),
            cycles=rate.clusters,
            wilson_low=rate.wilson_low,
            wilson_high=rate.wilson_high,
            **extra,
        )

    @classmethod
    def from_records(cls, run_id: str, records: list[TrialRecord], **extra: Any) -> BatchSummary:
        """The summary of a run from its stored trials alone (at least one): what a
        sweep's client writes, so the ``runs`` summary counts what ``trials`` holds
        whichever hosts and attempts recorded them."""
        last = records[-1]
        backend = SimpleNamespace(
            name=last.backend,
            image=last.image,
            cache_image=last.cache_image,
            cache_type=last.cache_type,
            mode=last.mode,
        )
        return cls.of(run_id, backend, last.reset_freq, records, **extra)


class LabSession:
    """Shared registries of one batch or sweep, labelled with ``session_id``.

    On enter it reaps objects left by dead runs, starts the cache registry and,
    for backends that pull through BuildKit, the mirror (a Docker Hub proxy
    online, or seeded from the local engine's images offline). On exit it
    removes everything labelled with the session, unless ``keep``.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        session_id: str,
        *,
        paths: Paths,
        offline: bool,
        registry_image: str = lab.DEFAULT_REGISTRY_IMAGE,
        need_mirror: bool = True,
        seed_images: list[str] | None = None,
        keep: bool = False,
        hub_url: str = DOCKER_HUB,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.paths = paths
        self.offline = offline
        self.registry_image = registry_image
        self.need_mirror = need_mirror
        self.seed_images = list(seed_images or [])
        self.keep = keep
        self.hub_url = hub_url
        self.cache_registry: lab.Registry | None = None
        self.mirror: lab.Registry | None = None
        self.reaped: lab.SweepResult | None = None
        self._stack = contextlib.ExitStack()

    @property
    def dir(self) -> Path:
        return self.paths.run_dir(self.session_id)

    def __enter__(self) -> LabSession:
        try:
            self.reaped = lab.sweep(self.client)
            reap_dead_run_dirs(self.paths)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.dir.chmod(0o700)  # logs and tarballs are the user's alone
            (self.dir / "owner.json").write_text(
                json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
            )
            self._stack.callback(self._remove_everything)
            self.cache_registry = self._stack.enter_context(
                lab.Registry(
                    self.client,
                    self.session_id,
                    role="cache",
                    image=self.registry_image,
                    keep=self.keep,
                )
            )
            if self.need_mirror:
                self.mirror = self._stack.enter_context(
                    lab.Registry(
                        self.client,
                        self.session_id,
                        role="mirror",
                        image=self.registry_image,
                        proxy_remote=None if self.offline else self.hub_url,
                        keep=self.keep,
                    )
                )
                if self.offline:
                    for image in self.seed_images:
                        lab.ensure_image(self.client, image, offline=True)
                    lab.seed_mirror(self.client, self.mirror, self.seed_images)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _remove_everything(self) -> None:
        if self.keep:
            return
        lab.sweep(self.client, self.session_id)
        remove_scratch(self.dir)

    def env(
        self,
        run_id: str,
        scenario: Scenario,
        work_dir: Path,
        client: docker.DockerClient | None = None,
    ) -> BatchEnv:
        assert self.cache_registry is not None
        return BatchEnv(
            client=client or self.client,
            run_id=run_id,
            scenario=scenario,
            cache_registry=self.cache_registry,
            mirror=self.mirror,
            work_dir=work_dir,
            offline=self.offline,
            keep=self.keep,
            label_id=self.session_id,
        )


SCRATCH = ("outputs", "cache", "cache-export")


def remove_scratch(run_dir: Path) -> None:
    """Remove a run directory's temporary files; logs and evidence stay."""
    if not run_dir.is_dir():
        return
    for sub in run_dir.rglob("*"):
        if sub.is_dir() and (sub.name in SCRATCH or sub.name.startswith("context-")):
            shutil.rmtree(sub, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "owner.json").unlink()


def reap_dead_run_dirs(paths: Paths) -> list[Path]:
    """Scratch files of runs whose owner process is gone (after a crash)."""
    reaped = []
    if not paths.runs.is_dir():
        return reaped
    for owner in paths.runs.glob("*/owner.json"):
        try:
            data = json.loads(owner.read_text())
        except (OSError, ValueError):
            data = {}
        if lab.owner_alive(
            {
                lab.OWNER_PID_LABEL: str(data.get("pid", "")),
                lab.OWNER_HOST_LABEL: data.get("host", ""),
            }
        ):
            continue
        remove_scratch(owner.parent)
        reaped.append(owner.parent)
    return reaped


def run_batch(
    session: LabSession,
    options: BatchOptions,
    store: Store,
    *,
    run_id: str,
    scenario: Scenario | None = None,
    lane: int = 0,
    sweep_id: str | None = None,
    cell: str | None = None,
    trials: list[int] | None = None,
    should_stop: Callable[[list[TrialRecord]], bool] | None = None,
    interrupted: Callable[[], bool] | None = None,
    on_record: Callable[[TrialRecord], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    client: docker.DockerClient | None = None,
    attempt: int = 1,
) -> BatchSummary:
    """Export the cache (unless skipped) and run the trials of one cell.

    ``trials`` restricts the run to those trial numbers (resume); records of this
    run already in the store are never rerun.
    """
    options.validate()
    scenario = scenario or load_scenario(options.scenario, base_image=options.base_image)
    client = client or session.client  # a lane may build on its own engine
    facts = lab.HostFacts.of(client)
    backend = backend_class(options.backend).from_options(options)
    work_dir = session.dir if run_id == session.session_id else session.dir / run_id
    env = session.env(run_id, scenario, work_dir, client)
    store.start_run(
        run_id, {**asdict(options), "scenario_name": scenario.name}, sweep_id=sweep_id, cell=cell
    )
    done = store.trial_numbers(run_id)
    wanted = [t for t in (trials or range(1, options.tries + 1)) if t not in done]
    ctx = TrialContext(
        run_id=run_id,
        reset_freq=options.reset_freq,
        scenario=scenario.name,
        facts=facts,
        lane=lane,
        sweep_id=sweep_id,
        cell=cell,
        attempt=attempt,
    )
    status = "failed"
    stopped = ""
    try:
        backend.prepare(env, lane=lane)
        reference = None
        if not options.skip_create_cache and wanted:
            if on_phase:
                on_phase("exporting cache")
            reference = _export_and_check(backend, scenario)
        if wanted:
            facts = _cache_facts(backend, run_id, work_dir, reference)
            store.record_batch(facts)
            ctx = replace(ctx, reference=reference, cache=facts)
        if options.skip_tests:
            wanted = []
        if on_phase:
            on_phase("trials")
        state = run_trials(
            backend,
            env,
            store,
            ctx,
            wanted,
            stop_on_failure=options.stop_on_failure,
            should_stop=should_stop,
            interrupted=interrupted,
            on_record=on_record,
        )
        if options.stop_on_failure and any(
            r.outcome is Outcome.MISSING_LAYER for r in state.records
        ):
            stopped = "stop-on-failure"
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        with contextlib.suppress(Exception):
            backend.close()
        records = store.trials(run_id)
        kept: dict[str, Any] = {}
        if options.no_cleanup:
            kept = {
                "cache_ref": getattr(backend, "cache_location", None),
                "cache_registry": session.cache_registry.address
                if session.cache_registry
                else None,
                "mirror": session.mirror.address if session.mirror else None,
                "work_dir": str(work_dir),
            }
        summary = BatchSummary.of(
            run_id,
            backend,
            options.reset_freq,
            records,
            stopped=stopped,
            work_dir=str(work_dir),
            kept=kept,
        )
        with contextlib.suppress(Exception):  # the store may be what failed
            store.finish_run(run_id, status, summary.as_dict())
    return summary


def _cache_facts(
    backend: Any, run_id: str, work_dir: Path, reference: forensics.Reference | None
) -> forensics.CacheFacts:
    """What the exported cache holds, read once per batch (never raises: see forensics)."""
    location = getattr(backend, "cache_location", "")
    facts = forensics.read_cache(
        run_id=run_id,
        cache_type=backend.cache_type,
        exporter=backend.cache_image,
        location=str(location),
        run_dir=work_dir,
    )
    facts.reference = reference.as_dict() if reference is not None else None
    return facts


def _export_and_check(backend: Any, scenario: Scenario) -> forensics.Reference | None:
    """Export the cache; a fresh build lacking an expected path means a wrong scenario.

    Returns what a complete output looks like (the export build's layers or
    file tree), the reference that failed tries are compared with.
    """
    output = backend.export_cache()
    if output.tarball is None:
        return None
    outcome, missing, detail, _ = classify(output, scenario.expected)
    reference = None
    if outcome is Outcome.OK:
        with contextlib.suppress(OSError, KeyError, ValueError, tarfile.TarError):
            reference = forensics.reference_of(output.tarball)
    output.tarball.unlink(missing_ok=True)
    if outcome is Outcome.MISSING_LAYER:
        raise UsageError(
            f"the cache-export build already lacks {', '.join(missing)}",
            hint="check expected.txt of the scenario",
        )
    if outcome is not Outcome.OK:
        raise InfraError(f"the cache-export build gave no usable output: {detail}")
    return reference


def reproduce(
    client: docker.DockerClient,
    options: BatchOptions,
    *,
    store_path: str | Path | None = None,
    paths: Paths | None = None,
    progress: bool = True,
    run_id: str | None = None,
) -> BatchSummary:
    """One batch end to end, as ``repro-lib reproduce`` runs it; notebooks call this too.

    Raises:
        ReproError: a usage, requirement or infrastructure error (see ``repro_lib.errors``).
    """
    options.validate()
    paths = paths or Paths.from_env()
    scenario = load_scenario(options.scenario, base_image=options.base_image)
    run_id = run_id or lab.new_run_id()
    with (
        Store(store_path or paths.store) as store,
        LabSession(
            client,
            run_id,
            paths=paths,
            offline=options.offline,
            registry_image=options.registry_image,
            need_mirror=supports(backend_class(options.backend), "mirror"),
            seed_images=scenario.base_images(),
            keep=options.no_cleanup,
            hub_url=options.hub_url,
        ) as session,
    ):
        bar = BatchProgress(options.tries, run_id, enabled=progress)
        try:
            return run_batch(
                session,
                options,
                store,
                run_id=run_id,
                scenario=scenario,
                on_record=bar.record,
                on_phase=bar.phase,
            )
        finally:
            bar.close()
