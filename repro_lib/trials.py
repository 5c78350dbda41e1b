"""The trial loop: reset on schedule, build with the cache, verify, record each try.

The loop knows only the :class:`~repro_lib.builders.Backend` protocol. Each
record is appended to the store the moment its try ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import __version__
from .builders import Backend, BatchEnv, BuildOutput
from .errors import BuildFailed, InfraError, UsageError, VerifyError
from .forensics import CacheFacts, Loss, Reference, what_was_lost, write_bundle
from .lab import HostFacts
from .records import Outcome, TrialRecord
from .store import Store, utcnow
from .verify import verify_tarball

#: consecutive infra errors after which the batch stops instead of recording more
MAX_CONSECUTIVE_INFRA_ERRORS = 3


def validate_counts(tries: int, reset_freq: int) -> None:
    if tries < 1:
        raise UsageError(f"--tries must be at least 1 (got {tries})")
    if reset_freq < 1:
        raise UsageError(f"--reset-freq must be at least 1 (got {reset_freq})")


def resets_before(trial: int, reset_freq: int) -> bool:
    """Whether the schedule starts a fresh BuildKit state before ``trial`` (1-based)."""
    return (trial - 1) % reset_freq == 0


def reset_schedule(tries: int, reset_freq: int) -> list[int]:
    """The trials (1-based) that start from a fresh state."""
    return [t for t in range(1, tries + 1) if resets_before(t, reset_freq)]


@dataclass
class LoopState:
    """What the loop knows about the state it builds on: the truth, not the plan."""

    since_reset: int = 0
    reset_index: int = -1
    cycle: int = 0  # the trial number of the current cycle's first try
    consecutive_infra: int = 0
    records: list[TrialRecord] = field(default_factory=list)


@dataclass(frozen=True)
class TrialContext:
    run_id: str
    reset_freq: int
    scenario: str
    facts: HostFacts
    lane: int = 0
    sweep_id: str | None = None
    cell: str | None = None
    attempt: int = 1
    reference: Reference | None = None  # what a complete output looks like (the export build)
    cache: CacheFacts | None = None  # what the imported cache held


def classify(
    output: BuildOutput | None, expected: Iterable[str]
) -> tuple[Outcome, list[str], str, dict]:
    """Verify a finished build. Unreadable output is a build error, never ``ok``."""
    if output is None or output.tarball is None:
        return Outcome.BUILD_ERROR, [], "the build produced no output tarball", {}
    try:
        verdict = verify_tarball(output.tarball, tuple(expected))
    except VerifyError as exc:
        return Outcome.BUILD_ERROR, [], str(exc), {}
    extra = {"layers": verdict.layers, "layer_digests": list(verdict.layer_digests)}
    return verdict.outcome, list(verdict.missing), verdict.detail, extra


def run_trials(
    backend: Backend,
    env: BatchEnv,
    store: Store,
    ctx: TrialContext,
    trials: Iterable[int],
    *,
    stop_on_failure: bool = False,
    should_stop: Callable[[list[TrialRecord]], bool] | None = None,
    on_record: Callable[[TrialRecord], None] | None = None,
    keep_outputs: bool = False,
    interrupted: Callable[[], bool] | None = None,
) -> LoopState:
    """Run the given trial numbers; returns the loop state with this call's records.

    The first try of a call always starts fresh (a resumed batch cannot trust a
    state it did not build), so ``since_reset`` records what really happened. A
    reset, even one that fails, starts a cycle: its first try has ``since_reset``
    1 and names the cycle (``cycle``) by its trial number. A failed reset's try is
    a cycle of one (an infra error), as the next try resets again.

    A try that errs once ``interrupted()`` is true is not recorded: the user's stop
    (Ctrl-C reaches the build's own processes too) cut it short, so it says nothing
    about BuildKit, and a resume runs it again.

    Raises:
        InfraError: several tries in a row failed for infrastructure reasons.
    """
    state = LoopState()
    evidence_dir = env.work_dir / "evidence"
    for trial in trials:
        reset_s = 0.0
        if state.reset_index < 0 or resets_before(trial, ctx.reset_freq) or state.consecutive_infra:
            state.since_reset, state.cycle = 0, trial
            state.reset_index += 1
            t_reset = time.monotonic()
            try:
                backend.reset()
                reset_s = time.monotonic() - t_reset
            except InfraError as exc:
                state.since_reset = 1
                record = _record(
                    backend,
                    ctx,
                    trial,
                    utcnow(),
                    0.0,
                    state,
                    Outcome.INFRA_ERROR,
                    detail=f"reset failed: {exc.one_line()}",
                )
                _append(store, record, state, on_record)
                _after_infra_error(state, env, exc.one_line())
                continue
        state.since_reset += 1
        started_at, t0 = utcnow(), time.monotonic()
        output: BuildOutput | None = None
        missing: list[str] = []
        extra: dict = {}
        try:
            output = backend.build(trial)
            t_verify = time.monotonic()
            outcome, missing, detail, extra = classify(output, env.scenario.expected)
            output.phases["verify"] = time.monotonic() - t_verify
            if reset_s:
                output.phases["reset"] = reset_s
        except BuildFailed as exc:
            outcome, detail = Outcome.BUILD_ERROR, f"{exc}\n{exc.log_tail}".strip()
        except InfraError as exc:
            outcome, detail = Outcome.INFRA_ERROR, exc.one_line()
        if outcome in (Outcome.BUILD_ERROR, Outcome.INFRA_ERROR) and interrupted and interrupted():
            break
        log_path = env.logs_dir / f"trial-{trial:04d}.log"
        loss: Loss | None = None
        bundle = ""
        if outcome is Outcome.MISSING_LAYER:
            loss = what_was_lost(
                output.tarball if output else None,
                missing,
                env.scenario.dockerfile,
                ctx.reference,
                layer_digests=extra.get("layer_digests") if extra.get("layers") else None,
            )
            bundle_dir = write_bundle(
                evidence_dir / f"trial-{trial:04d}",
                trial=trial,
                missing=missing,
                loss=loss,
                tarball=output.tarball if output else None,
                build_log=log_path,
                daemon_log=_daemon_log(backend),
                cache_manifest=env.work_dir / ctx.cache.manifest_path
                if ctx.cache and ctx.cache.manifest_path
                else None,
                facts=ctx.cache,
            )
            bundle = str(bundle_dir.relative_to(env.work_dir))
        record = _record(
            backend,
            ctx,
            trial,
            started_at,
            time.monotonic() - t0,
            state,
            outcome,
            missing=missing,
            detail=detail,
            output=output,
            log_path=str(log_path.relative_to(env.work_dir)),  # stores travel: relative
            loss=loss,
            evidence_path=bundle,
            **extra,
        )
        _append(store, record, state, on_record)
        tarball = output.tarball if output is not None else None
        if tarball is not None and tarball.exists() and not keep_outputs:
            tarball.unlink()  # a failure's output was moved into its evidence bundle
        if outcome is Outcome.INFRA_ERROR:
            _after_infra_error(state, env, detail)
        else:
            state.consecutive_infra = 0
        if stop_on_failure and outcome is Outcome.MISSING_LAYER:
            break
        if should_stop is not None and should_stop(state.records):
            break
    return state


def _after_infra_error(state: LoopState, env: BatchEnv, detail: str) -> None:
    """Count an infra error; stop after several in a row, else wait for the lab to heal.

    Waiting lets a batch ride out an engine restart: the registries come back
    with the engine (restart policy) and the next try starts from a reset.
    """
    state.consecutive_infra += 1
    if state.consecutive_infra >= MAX_CONSECUTIVE_INFRA_ERRORS:
        raise InfraError(
            f"{state.consecutive_infra} infrastructure errors in a row; last: {detail}"
        )
    env.wait_healthy()


def _append(store: Store, record: TrialRecord, state: LoopState, on_record) -> None:
    store.append(record)
    state.records.append(record)
    if on_record is not None:
        on_record(record)


def _record(
    backend: Backend,
    ctx: TrialContext,
    trial: int,
    started_at: str,
    duration: float,
    state: LoopState,
    outcome: Outcome,
    *,
    missing: list[str] | None = None,
    detail: str = "",
    output: BuildOutput | None = None,
    log_path: str = "",
    layers: int | None = None,
    layer_digests: list[str] | None = None,
    loss: Loss | None = None,
    evidence_path: str = "",
) -> TrialRecord:
    return TrialRecord(
        run_id=ctx.run_id,
        trial=trial,
        started_at=started_at,
        duration_s=round(duration, 4),
        backend=backend.name,
        image=backend.image,
        version=backend.version,
        cache_image=backend.cache_image,
        cache_version=backend.cache_version,
        cache_type=backend.cache_type,
        mode=backend.mode,
        reset_freq=ctx.reset_freq,
        since_reset=state.since_reset,
        reset_index=state.reset_index,
        cycle=state.cycle,
        lane=ctx.lane,
        outcome=outcome,
        missing=missing or [],
        layers=layers,
        layer_digests=layer_digests or [],
        cache_hits=output.cache_hits if output else None,
        cache_steps=output.cache_steps if output else None,
        cache_pulled=output.cache_pulled if output else None,
        phases={k: round(v, 4) for k, v in output.phases.items()} if output else {},
        scenario=ctx.scenario,
        sweep_id=ctx.sweep_id,
        cell=ctx.cell,
        engine_version=ctx.facts.engine_version,
        kernel=ctx.facts.kernel,
        package_version=__version__,
        detail=detail[:4000],
        log_path=log_path,
        buildkit_version=backend.buildkit_version,
        privileged=bool(backend.privileged),
        host=ctx.facts.host,
        cpus=ctx.facts.cpus,
        attempt=ctx.attempt,
        lost_steps=list(loss.steps) if loss else [],
        lost_digests=list(loss.digests) if loss else [],
        lost_reference=loss.reference if loss else "",
        evidence_path=evidence_path,
        buildctl_via=getattr(backend, "buildctl_via", ""),
        security=dict(getattr(backend, "security", None) or {}),
    )


def _daemon_log(backend: Backend) -> str | None:
    """The BuildKit daemon's log, where the backend keeps one (daemon mode)."""
    read = getattr(backend, "daemon_log", None)
    if read is None:
        return None
    try:
        return read()
    except Exception as exc:  # evidence is best effort; the record must still be written
        return f"(daemon log unavailable: {exc})"


def positions_of_failures(records: Iterable[TrialRecord]) -> list[int]:
    return [r.since_reset for r in records if r.outcome is Outcome.MISSING_LAYER]
