"""A sweep's plan: its axes and settings, the cells they span, the shards they split into.

The plan is data that every part of a sweep reads and none of them changes: the
sweep runs its cells, an executor hands them to lanes or cluster workers, a
bisection builds plans of its own, a merge recognises shards of one plan by its
digest. So it sits below all of them and knows only the batch options a cell
becomes and the backends that run it.

A CI matrix (or a few people with laptops) is a cluster with no scheduler: N
jobs that cannot talk to each other each run one part of the same plan. So the
partition must follow from the plan and N alone, never from the order of a
dict, a hash seed or the machine, and the plan itself must be recognisable
across stores (``plan_digest``) so a merge can tell shards of one sweep from
different experiments that happen to share an id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from . import stats
from .batch import BatchOptions
from .builders import backend_class, supports, version_of_image
from .errors import UsageError
from .records import TrialRecord, evidence

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
    "debug_failures",
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


def stop_rule(plan: Plan) -> Callable[[list[TrialRecord]], stats.StopDecision] | None:
    """The ``--until-confident`` rule: ``stats.should_stop`` with the cell's complete
    reset cycles, so a clean stop keeps its error rate when failures cluster in a cycle."""
    if not plan.until_confident:
        return None

    def decide(records: list[TrialRecord]) -> stats.StopDecision:
        k, n = evidence(records)
        cycles = stats.complete_cycles(stats.records_frame(records)) if k == 0 else None
        return stats.should_stop(
            k,
            n,
            max_rate=plan.max_rate,
            alpha=plan.alpha,
            min_tries=plan.min_tries,
            cycles=cycles,
        )

    return decide


# shards ----------------------------------------------------------------------

#: plan keys that do not change which trials a sweep records: how many lanes a
#: machine runs, which docker CLI it has, whether its engine may be pruned, and
#: the bookkeeping a sweep adds when it stores its plan
DIGEST_EXCLUDED = frozenset({"lanes", "shard", "command", "plan_digest"})


DIGEST_EXCLUDED_BATCH = frozenset({"docker_cli", "allow_prune"})


def with_allow_prune(plan: Plan, allow_prune: bool) -> Plan:
    """A recorded plan, resumed here with this machine's permission to prune an engine
    the lab did not start: not part of what was planned (nor of its digest)."""
    if not allow_prune:
        return plan
    return replace(plan, batch={**plan.batch, "allow_prune": True})


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``.

    Raises:
        UsageError: not ``K/N`` with whole numbers and 1 <= K <= N.
    """
    match = _SHARD.match(str(text))
    if not match:
        raise UsageError(f"--shard {text!r} is not K/N", hint="e.g. --shard 2/3 for the 2nd of 3")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text!r} needs 1 <= K <= N", hint=f"e.g. --shard 1/{max(n, 1)}")
    return k, n


def format_shard(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def planned_tries(plan: Plan, cell: Cell) -> int:
    """Tries a cell is planned to run: the weight the partition balances.

    Every cell of today's plans has ``plan.tries``; the partition only relies on
    this function, so a plan with per-cell tries would stay balanced.
    """
    return plan.tries


def partition(plan: Plan, n: int) -> list[list[Cell]]:
    """The plan's cells in ``n`` parts, balanced by planned tries.

    Greedy largest-first: cells sorted by (planned tries descending, cell index)
    go one by one to the part with the fewest planned tries so far (the lowest
    part number on a tie). Cell indices come from the plan's axis lists, which
    are ordered, so the same plan and ``n`` give the same parts in any process.
    Each part lists its cells in plan order; a part may be empty when ``n``
    exceeds the number of cells.
    """
    if n < 1:
        raise UsageError(f"cannot split a plan into {n} shards", hint="N must be at least 1")
    cells = plan.cells()
    parts: list[list[Cell]] = [[] for _ in range(n)]
    load = [0] * n
    for cell in sorted(cells, key=lambda c: (-planned_tries(plan, c), c.index)):
        target = min(range(n), key=lambda i: (load[i], i))
        parts[target].append(cell)
        load[target] += planned_tries(plan, cell)
    return [sorted(part, key=lambda c: c.index) for part in parts]


def shard_cells(plan: Plan, shard: tuple[int, int] | None) -> list[Cell]:
    """The cells shard ``(k, n)`` runs; every cell when ``shard`` is None."""
    if shard is None:
        return plan.cells()
    k, n = shard
    return partition(plan, n)[k - 1]


def plan_digest(plan: Plan | Mapping[str, Any]) -> str:
    """A stable hash of what a plan records: axes, settings and batch options.

    Lanes and machine-local options (``DIGEST_EXCLUDED``) are left out, so shards
    run with different ``--lanes`` or docker CLIs are still one plan. Accepts a
    ``Plan`` or the plan dict a sweep stored (``sweeps.plan``), which hash alike.
    """
    data = dict(plan.as_dict() if hasattr(plan, "as_dict") else plan)  # type: ignore[union-attr]
    for key in DIGEST_EXCLUDED:
        data.pop(key, None)
    batch = {
        k: v
        for k, v in dict(data.get("batch") or {}).items()
        if k not in DIGEST_EXCLUDED_BATCH and v is not None
    }
    data["batch"] = batch
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# sweep ids -------------------------------------------------------------------

_SWEEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def check_sweep_id(sweep_id: str) -> str:
    """A sweep id names containers, volumes, engines and directories: keep it plain.

    Raises:
        UsageError: characters Docker names or paths would reject.
    """
    if not _SWEEP_ID.match(sweep_id):
        raise UsageError(
            f"--sweep-id {sweep_id!r} is not a plain name",
            hint="use letters, digits, '.', '_' or '-' (at most 80), e.g. --sweep-id ci-1234",
        )
    return sweep_id


def sweep_id_for(plan: Plan) -> str:
    """The sweep id shards share when no ``--sweep-id`` is given: one per plan."""
    return f"p{plan_digest(plan)}"


def shard_to_resume(
    sweep_id: str, recorded: Iterable[str | None], given: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Which shard ``--resume`` continues, from the shards the store recorded.

    Resuming a shard's store without ``--shard`` must not run the other shards'
    cells (their trials would then exist twice, and the merge would refuse), so
    one recorded shard is taken as meant; several need ``--shard``; and a shard
    of another N would cut the plan differently.

    Raises:
        UsageError: several shards recorded and none given, or N differs.
    """
    shards = sorted({parse_shard(v) for v in recorded if v})
    if given is None:
        if len(shards) > 1:
            listed = ", ".join(format_shard(s) for s in shards)
            raise UsageError(
                f"sweep {sweep_id} holds shards {listed} in this store",
                hint="pass --shard K/N to say which one to resume",
            )
        return shards[0] if shards else None
    other_n = sorted({n for _, n in shards if n != given[1]})
    if other_n:
        raise UsageError(
            f"sweep {sweep_id} was split into {other_n[0]} shards, not {given[1]}",
            hint=f"resume with --shard K/{other_n[0]}",
        )
    return given
