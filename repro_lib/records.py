"""The trial record: the contract between running trials and analysing them."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Outcome(str, enum.Enum):
    """What one try showed.

    A build error is never counted as a missing layer, and a missing layer is
    never hidden by a build error: ``missing_layer`` is only given to a build
    that succeeded and produced a readable tarball lacking an expected path.
    """

    OK = "ok"
    MISSING_LAYER = "missing_layer"
    BUILD_ERROR = "build_error"
    INFRA_ERROR = "infra_error"


@dataclass(frozen=True)
class TrialRecord:
    """One try of one batch, as stored (one row of ``trials``)."""

    run_id: str
    trial: int  # 1-based within the run
    started_at: str  # ISO 8601, UTC
    duration_s: float
    backend: str  # container | engine
    image: str  # the BuildKit image (or engine) that imported the cache
    version: str  # BuildKit version of the importer
    cache_image: str  # who exported the cache
    cache_version: str
    cache_type: str  # registry | local | inline
    mode: str  # daemonless | daemon | engine
    reset_freq: int
    since_reset: int  # 1-based position in its reset cycle (1 = the first try after a reset)
    # 0-based count of the resets this attempt at the run made; it restarts with every
    # attempt (a worker's death, a resume), so use ``cycle`` to name a cycle in a run
    reset_index: int
    lane: int
    outcome: Outcome
    missing: list[str] = field(default_factory=list)
    layers: int | None = None
    layer_digests: list[str] = field(default_factory=list)
    cache_hits: int | None = None  # steps reported CACHED; None when the backend cannot tell
    cache_steps: int | None = None  # steps that could have been cached
    cache_pulled: int | None = None  # cache blobs pulled from the cache registry
    scenario: str = "reference"
    sweep_id: str | None = None
    cell: str | None = None
    engine_version: str = ""
    kernel: str = ""
    package_version: str = ""
    detail: str = ""  # error summary or verification evidence
    log_path: str = ""  # relative to the run directory (stores travel between machines)
    buildkit_version: str = ""  # for the engine backend: the BuildKit the engine vendors
    privileged: bool = False  # whether the BuildKit container ran --privileged
    # effective security flags of the BuildKit container: privileged, cap_add, cap_drop,
    # security_opt, mounts, weak_isolation ({} for backends without one)
    security: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the try
    host: str = ""  # the Docker host that ran the try ($REPRO_LIB_HOST, else its hostname)
    cpus: int | None = None  # CPUs of that host, as its engine reports them
    # which attempt at the cell recorded it (a cluster reruns a dead worker's cell)
    attempt: int = 1
    # the reset cycle's key: the trial number of the cycle's first try. Trial numbers
    # are unique in a run, so (run_id, cycle) names one cycle across attempts, resumes
    # and hosts. None in stores from before it; ``load_results`` derives it there.
    cycle: int | None = None
    lost_steps: list[str] = field(default_factory=list)  # Dockerfile steps whose result is absent
    lost_digests: list[str] = field(default_factory=list)  # lost layer digests (OCI output)
    lost_reference: str = ""  # what the loss was judged against
    evidence_path: str = ""  # the failure's evidence bundle, relative to the run directory
    buildctl_via: str = ""  # daemon mode: "host" (the image's buildctl over TCP) or "exec"

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["outcome"] = self.outcome.value
        row["missing"] = json.dumps(self.missing)
        row["layer_digests"] = json.dumps(self.layer_digests)
        row["phases"] = json.dumps(self.phases)
        for name in _LIST_FIELDS:
            row[name] = json.dumps(getattr(self, name))
        row["security"] = json.dumps(self.security, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values["outcome"] = Outcome(values["outcome"])
        values["missing"] = json.loads(values.get("missing") or "[]")
        values["layer_digests"] = json.loads(values.get("layer_digests") or "[]")
        values["phases"] = json.loads(values.get("phases") or "{}")
        for name in _LIST_FIELDS:
            if name in values:
                values[name] = json.loads(values[name] or "[]")
        for name in ("lost_reference", "evidence_path", "host", "buildctl_via"):
            if name in values and values[name] is None:
                values[name] = ""
        if values.get("attempt") is None:
            values.pop("attempt", None)
        values["security"] = json.loads(values.get("security") or "{}")
        return cls(**values)


_LIST_FIELDS = ("lost_steps", "lost_digests")

TRIAL_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialRecord))


def evidence(records: Iterable[TrialRecord]) -> tuple[int, int]:
    """(missing-layer failures, tries that count as evidence).

    Only ``ok`` and ``missing_layer`` tries are evidence about the bug; build and
    infra errors are left out of every rate.
    """
    k = n = 0
    for r in records:
        if r.outcome in (Outcome.OK, Outcome.MISSING_LAYER):
            n += 1
            k += r.outcome is Outcome.MISSING_LAYER
    return k, n
