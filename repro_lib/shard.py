"""Shards: the K-th of N deterministic parts of a sweep plan's cells.

A CI matrix (or a few people with laptops) is a cluster with no scheduler: N
jobs that cannot talk to each other each run one part of the same plan. So the
partition must follow from the plan and N alone, never from the order of a
dict, a hash seed or the machine, and the plan itself must be recognisable
across stores (``plan_digest``) so a merge can tell shards of one sweep from
different experiments that happen to share an id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:  # sweep imports this module; keep the import one-way at run time
    from .sweep import Cell, Plan

#: plan keys that do not change which trials a sweep records: how many lanes a
#: machine runs, which docker CLI it has, whether its engine may be pruned, and
#: the bookkeeping a sweep adds when it stores its plan
DIGEST_EXCLUDED = frozenset({"lanes", "shard", "command", "plan_digest"})
DIGEST_EXCLUDED_BATCH = frozenset({"docker_cli", "allow_prune"})

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
