"""Sweeps: a grid of cells (version × cache version × reset frequency × cache × mode),
scheduled over lanes, resumable, with early stopping; and bisection over versions.

The sweep is a scheduler over cells, not a second trial loop: every cell is one
:func:`repro_lib.batch.run_batch` with a deterministic run id
(``<sweep id>-c<index>``), so resuming a sweep reruns exactly the trials its
cells are missing. Lanes share the registries; each has its own BuildKit state
(and, for the engine backend with more than one lane, its own private engine,
because a reset prunes a whole engine's builder cache).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import docker
import tomllib

from . import lab, stats
from .batch import BatchOptions, BatchSummary, LabSession, run_batch
from .builders import backend_class, supports
from .config import Paths, lab_id
from .errors import UsageError
from .records import Outcome, TrialRecord, evidence
from .scenario import load_scenario
from .store import Store

AXES = ("versions", "cache_versions", "reset_freq", "cache", "mode")
SETTINGS = (
    "backend",
    "tries",
    "lanes",
    "until_confident",
    "max_rate",
    "alpha",
    "min_tries",
    "replicates",
)
#: BatchOptions fields a plan may set once for every cell
BATCH_FIELDS = (
    "offline",
    "base_image",
    "registry_image",
    "scenario",
    "output",
    "privileged",
    "security_opt",
    "cap_add",
    "cap_drop",
    "rootful_weak_isolation",
    "buildkitd_flags",
    "hub_url",
    "allow_prune",
    "docker_cli",
    "build_timeout",
)


def resolve_version(version: str) -> str:
    """``v0.9.0`` -> ``moby/buildkit:v0.9.0-rootless``; a full image name stays as it is."""
    version = version.strip()
    if not version:
        raise UsageError("empty version in the list")
    if "/" in version or ":" in version:
        return version
    if not version.startswith("v"):
        raise UsageError(f"version {version!r} is neither vX.Y.Z nor an image name")
    return f"moby/buildkit:{version}-rootless"


def default_lanes() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Cell:
    index: int
    image: str
    cache_image: str | None
    reset_freq: int
    cache: str
    mode: str
    backend: str
    replicate: int = 0
    replicates: int = 1

    def key(self) -> str:
        from .builders import version_of_image

        version = version_of_image(self.image) if self.backend == "container" else self.image
        parts = [f"backend={self.backend}", f"version={version}"]
        if self.cache_image and self.cache_image != self.image:
            parts.append(f"cache_version={version_of_image(self.cache_image)}")
        mode = self.mode if self.backend == "container" else "engine"
        parts += [f"cache={self.cache}", f"reset={self.reset_freq}", f"mode={mode}"]
        if self.replicates > 1:
            parts.append(f"rep={self.replicate}")
        return "/".join(parts)

    def run_id(self, sweep_id: str) -> str:
        return f"{sweep_id}-c{self.index:03d}"


@dataclass
class Plan:
    """A sweep's axes and settings; every list is an axis of the grid."""

    versions: list[str]
    reset_freq: list[int]
    cache: list[str]
    mode: list[str]
    cache_versions: list[str] | None = None
    backend: str = "container"
    tries: int = 100
    lanes: int = field(default_factory=default_lanes)
    until_confident: bool = False
    max_rate: float = 0.01
    alpha: float = 0.05
    min_tries: int = 1
    replicates: int = 1  # identical cells, e.g. to spread one configuration over lanes
    batch: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        images = [resolve_version(v) if self.backend == "container" else v for v in self.versions]
        exporters: list[str | None] = (
            [resolve_version(v) for v in self.cache_versions] if self.cache_versions else [None]
        )
        product = itertools.product(
            images, exporters, self.reset_freq, self.cache, self.mode, range(self.replicates)
        )
        return [
            Cell(i, image, cache_image, k, cache, mode, self.backend, rep, self.replicates)
            for i, (image, cache_image, k, cache, mode, rep) in enumerate(product)
        ]

    def batch_options(self, cell: Cell, command: str = "") -> BatchOptions:
        return BatchOptions(
            backend=self.backend,
            image=cell.image,
            cache_image=cell.cache_image,
            tries=self.tries,
            reset_freq=cell.reset_freq,
            cache=cell.cache,
            mode=cell.mode,
            command=command,
            **self.batch,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_list(name: str, value: Any, kind: type) -> list[Any]:
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v != ""]
    elif not isinstance(value, list):
        value = [value]
    if not value:
        raise UsageError(f"{name} is an empty list")
    out = []
    for v in value:
        try:
            out.append(kind(v))
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {v!r} is not a valid {kind.__name__}") from None
    if len(set(out)) != len(out):
        dup = sorted({v for v in out if out.count(v) > 1}, key=str)
        raise UsageError(f"{name} lists {', '.join(map(str, dup))} more than once")
    return out


def validate_plan(raw: dict[str, Any]) -> Plan:
    """Turn a plan (from a file or the command line) into a checked :class:`Plan`.

    Raises:
        UsageError: unknown key, empty or duplicated list, or a bad number.
    """
    known = set(AXES) | set(SETTINGS) | set(BATCH_FIELDS) | {"batch"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(
            f"unknown plan key {', '.join(unknown)}",
            hint=f"axes are {', '.join(AXES)}; settings {', '.join(SETTINGS)}",
        )
    backend = str(raw.get("backend", "container"))
    factory = backend_class(backend)
    default_cache = factory.cache_types[0]
    batch = dict(raw.get("batch") or {})
    batch.update({k: raw[k] for k in BATCH_FIELDS if k in raw})
    plan = Plan(
        versions=_as_list(
            "versions",
            raw.get("versions", ["engine"] if backend != "container" else None) or [],
            str,
        ),
        reset_freq=_as_list("reset_freq", raw.get("reset_freq", [4]), int),
        cache=_as_list("cache", raw.get("cache", [default_cache]), str),
        mode=_as_list("mode", raw.get("mode", ["daemonless"]), str),
        cache_versions=_as_list("cache_versions", raw["cache_versions"], str)
        if raw.get("cache_versions")
        else None,
        backend=backend,
        tries=_number("tries", raw.get("tries", 100), int, minimum=1),
        lanes=_number("lanes", raw.get("lanes", default_lanes()), int, minimum=1),
        until_confident=bool(raw.get("until_confident", False)),
        max_rate=_number(
            "max_rate", raw.get("max_rate", 0.01), float, minimum=1e-6, maximum=0.999999
        ),
        alpha=_number("alpha", raw.get("alpha", 0.05), float, minimum=1e-6, maximum=0.5),
        min_tries=_number("min_tries", raw.get("min_tries", 1), int, minimum=1),
        replicates=_number("replicates", raw.get("replicates", 1), int, minimum=1),
        batch=batch,
    )
    for k in plan.reset_freq:
        if k < 1:
            raise UsageError(f"reset_freq must be at least 1 (got {k})")
    for cache in plan.cache:
        if cache not in factory.cache_types:
            raise UsageError(
                f"cache {cache!r}: the {backend} backend takes {', '.join(factory.cache_types)}"
            )
    for mode in plan.mode:
        if mode not in ("daemonless", "daemon"):
            raise UsageError(f"mode {mode!r} needs daemonless or daemon")
        if mode == "daemon" and not supports(factory, "daemon-mode"):
            raise UsageError(f"mode daemon applies to a backend with its own daemon, not {backend}")
    if backend == "container":
        for v in plan.versions + (plan.cache_versions or []):
            resolve_version(v)
    elif plan.cache_versions:
        raise UsageError("cache_versions applies to the container backend only")
    unknown_batch = sorted(set(batch) - set(BATCH_FIELDS))
    if unknown_batch:
        raise UsageError(f"unknown plan key {', '.join(unknown_batch)}")
    return plan


def _number(
    name: str, value: Any, kind: type, *, minimum: float, maximum: float | None = None
) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: {value!r} is not a valid {kind.__name__}") from None
    if isinstance(value, bool) or number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"{name} must be {bound} (got {value!r})")
    return number


def load_plan(path: str | Path, **overrides: Any) -> Plan:
    """Read a TOML plan file; command-line values in ``overrides`` win.

    Raises:
        UsageError: the file is missing or malformed, or the plan is invalid.
    """
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"plan file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"plan file {path} is not valid TOML: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_plan(raw)


# scheduling ------------------------------------------------------------------


def schedule(cells: list[Cell]) -> queue.Queue[Cell]:
    """A shared work queue: each lane takes the next cell when it is free."""
    work: queue.Queue[Cell] = queue.Queue()
    for cell in cells:
        work.put(cell)
    return work


def new_sweep_id() -> str:
    return f"s{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class CellResult:
    cell: str
    run_id: str
    tries: int
    failures: int
    build_errors: int
    infra_errors: int
    rate: float | None
    ci_low: float
    ci_high: float
    tries_to_verdict: int
    stopped: str
    verdict: str


@dataclass
class SweepOutcome:
    sweep_id: str
    cells: list[CellResult]
    status: str

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.cells)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.cells]


def stop_rule(plan: Plan) -> Callable[[list[TrialRecord]], stats.StopDecision] | None:
    if not plan.until_confident:
        return None

    def decide(records: list[TrialRecord]) -> stats.StopDecision:
        k, n = evidence(records)
        return stats.should_stop(
            k, n, max_rate=plan.max_rate, alpha=plan.alpha, min_tries=plan.min_tries
        )

    return decide


class _LaneEngines:
    """For the engine backend with several lanes: one private engine per lane.

    A reset prunes the builder cache of a whole engine, so lanes sharing one engine
    would reset each other's state mid-cycle; private engines keep lanes independent.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        paths: Paths,
        sweep_id: str,
        lanes: int,
        images: list[str],
    ):
        self.client, self.paths, self.sweep_id, self.lanes, self.images = (
            client,
            paths,
            sweep_id,
            lanes,
            images,
        )
        self.names: list[str] = []
        self.clients: list[docker.DockerClient] = []

    def __enter__(self) -> _LaneEngines:
        from . import dockerd as private

        try:
            blobs = {
                image: b"".join(self.client.images.get(image).save(named=True))
                for image in self.images
            }
            for lane in range(self.lanes):
                name = f"{lab_id()}-{self.sweep_id}-l{lane}"
                self.names.append(name)
                started = private.start(self.paths, name, owned=True)
                lane_client = lab.connect(started.host)
                for data in blobs.values():
                    lane_client.images.load(data)
                self.clients.append(lane_client)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from . import dockerd as private

        for c in self.clients:
            with contextlib.suppress(Exception):
                c.close()
        for name in self.names:
            with contextlib.suppress(Exception):
                private.stop(self.paths, name)
                private.remove_data(self.paths, name)


def run_sweep(
    client: docker.DockerClient,
    plan: Plan,
    *,
    sweep_id: str | None = None,
    store_path: str | Path | None = None,
    paths: Paths | None = None,
    progress: bool = True,
    command: str = "",
    on_cell_done: Callable[[CellResult], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) every cell of ``plan``; trials already recorded are never rerun.

    Raises:
        ReproError: a usage or environment problem that stops the whole sweep.
    """
    from .progress import SweepProgress

    paths = paths or Paths.from_env()
    store_path = Path(store_path or paths.store)
    sweep_id = sweep_id or new_sweep_id()
    cells = plan.cells()
    scenario = load_scenario(plan.batch.get("scenario"), base_image=plan.batch.get("base_image"))
    factory = backend_class(plan.backend)
    rule = stop_rule(plan)
    lanes = min(plan.lanes, len(cells))
    with Store(store_path) as store:
        store.start_sweep(sweep_id, {**plan.as_dict(), "command": command})
        store.set_sweep_status(sweep_id, "running")
        done_before = {c.index: store.trials(c.run_id(sweep_id)) for c in cells}
    for image in {c.image for c in cells} | {c.cache_image for c in cells if c.cache_image}:
        if plan.backend == "container":
            lab.ensure_image(client, image, offline=bool(plan.batch.get("offline")))
    todo = [c for c in cells if _needs_work(c, done_before[c.index], plan, rule)]
    bar = SweepProgress(
        total=sum(plan.tries for _ in cells),
        done=sum(_finished(c, done_before[c.index], plan, rule) for c in cells),
        lanes=lanes,
        label=sweep_id,
        enabled=progress,
    )
    stop_event = threading.Event()
    errors: list[BaseException] = []
    status = "failed"
    try:
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(
                LabSession(
                    client,
                    sweep_id,
                    paths=paths,
                    offline=bool(plan.batch.get("offline")),
                    registry_image=plan.batch.get("registry_image", lab.DEFAULT_REGISTRY_IMAGE),
                    need_mirror=supports(factory, "mirror"),
                    seed_images=scenario.base_images(),
                    hub_url=plan.batch.get("hub_url", BatchOptions.hub_url),
                )
            )
            if plan.backend != "container" and lanes > 1:
                engines = stack.enter_context(
                    _LaneEngines(client, paths, sweep_id, lanes, scenario.base_images())
                )
                lane_clients = list(engines.clients)
            else:
                # one SDK client per lane thread: a client's HTTP session is not shared
                host = lab.engine_host_of(client)
                lane_clients = [lab.connect(host) for _ in range(lanes)]
                for c in lane_clients:
                    stack.callback(c.close)
            work = schedule(todo)

            def lane_main(lane: int) -> None:
                try:
                    with Store(store_path) as store:
                        while not stop_event.is_set():
                            try:
                                cell = work.get_nowait()
                            except queue.Empty:
                                return
                            _run_cell(
                                session,
                                plan,
                                store,
                                cell,
                                sweep_id,
                                lane,
                                lane_clients[lane],
                                rule,
                                done_before[cell.index],
                                bar,
                                stop_event,
                                command,
                            )
                except BaseException as exc:  # surfaced by the main thread
                    errors.append(exc)
                    stop_event.set()

            threads = [
                threading.Thread(target=lane_main, args=(lane,), daemon=True)
                for lane in range(lanes)
            ]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.2)
            except KeyboardInterrupt:
                stop_event.set()
                for t in threads:
                    t.join()
                status = "interrupted"
                raise
            if errors:
                raise errors[0]
            status = "done"
    finally:
        bar.close()
        with Store(store_path) as store:
            store.set_sweep_status(sweep_id, status)
    outcome = summarize(store_path, sweep_id, plan)
    if on_cell_done:
        for c in outcome.cells:
            on_cell_done(c)
    return outcome


def _finished(cell: Cell, records: list[TrialRecord], plan: Plan, rule: Any) -> int:
    return len(records) if _needs_work(cell, records, plan, rule) else plan.tries


def _needs_work(cell: Cell, records: list[TrialRecord], plan: Plan, rule: Any) -> bool:
    if len({r.trial for r in records}) >= plan.tries:
        return False
    return not (rule is not None and records and rule(records).stop)


def _run_cell(
    session: LabSession,
    plan: Plan,
    store: Store,
    cell: Cell,
    sweep_id: str,
    lane: int,
    client: docker.DockerClient,
    rule: Any,
    prior: list[TrialRecord],
    bar: Any,
    stop_event: threading.Event,
    command: str,
) -> BatchSummary:
    run_id = cell.run_id(sweep_id)
    decision: dict[str, str] = {}

    def should_stop(records: list[TrialRecord]) -> bool:
        if stop_event.is_set():
            decision["reason"] = "interrupted"
            return True
        if rule is None:
            return False
        verdict = rule(prior + records)
        if verdict.stop:
            decision["reason"] = verdict.reason
        return verdict.stop

    bar.lane(lane, cell.key(), len(prior), plan.tries)
    options = plan.batch_options(cell, command)
    summary = run_batch(
        session,
        options,
        store,
        run_id=run_id,
        lane=lane,
        sweep_id=sweep_id,
        cell=cell.key(),
        should_stop=should_stop,
        client=client,
        on_record=lambda r: bar.record(lane, r),
    )
    if decision.get("reason") and decision["reason"] != "interrupted":
        store.finish_run(run_id, "done", {**summary.as_dict(), "stopped": decision["reason"]})
        skipped = plan.tries - len(store.trial_numbers(run_id))
        bar.skip(skipped)
    if stop_event.is_set():
        raise KeyboardInterrupt("sweep stopped")
    return summary


def summarize(store_path: str | Path, sweep_id: str, plan: Plan) -> SweepOutcome:
    """One row per cell: counts, rate, interval, tries to verdict, why it stopped."""
    rows = []
    with Store(store_path) as store:
        status = (store.sweep(sweep_id) or {}).get("status", "unknown")
        for cell in plan.cells():
            run_id = cell.run_id(sweep_id)
            records = store.trials(run_id)
            run = store.run(run_id) or {}
            k, n = evidence(records)
            rate = stats.failure_rate(k, n, alpha=plan.alpha)
            stopped = ((run.get("summary") or {}).get("stopped")) or ""
            rows.append(
                CellResult(
                    cell=cell.key(),
                    run_id=run_id,
                    tries=len(records),
                    failures=k,
                    build_errors=sum(r.outcome is Outcome.BUILD_ERROR for r in records),
                    infra_errors=sum(r.outcome is Outcome.INFRA_ERROR for r in records),
                    rate=rate.p_hat if n else None,
                    ci_low=rate.ci_low,
                    ci_high=rate.ci_high,
                    tries_to_verdict=len(records),
                    stopped=stopped,
                    verdict=stats.verdict(k, n, max_rate=plan.max_rate, alpha=plan.alpha),
                )
            )
    return SweepOutcome(sweep_id, rows, status)


def resume_plan(store_path: str | Path, sweep_id: str) -> tuple[Plan, str]:
    """The plan and command of a recorded sweep.

    Raises:
        UsageError: no such sweep in the store.
    """
    if not Path(store_path).exists():
        raise UsageError(f"no results store at {store_path}", hint="pass --store")
    with Store(store_path) as store:
        recorded = store.sweep(sweep_id)
    if recorded is None:
        raise UsageError(
            f"no sweep {sweep_id!r} in {store_path}", hint="check the id printed when it started"
        )
    data = dict(recorded["plan"])
    command = data.pop("command", "")
    batch = data.pop("batch", {})
    data = {k: v for k, v in data.items() if k in {f.name for f in fields(Plan)}}
    data.pop("batch", None)
    return validate_plan({**data, **batch}), command
