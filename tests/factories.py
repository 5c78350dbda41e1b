"""Trial records for analysis tests (statistics, plots, reports): test data, not evidence."""

from __future__ import annotations

from typing import Any

from repro_lib.records import Outcome, TrialRecord


def make_record(
    trial: int = 1, outcome: str = "ok", *, version: str = "v0.9.0", **overrides: Any
) -> TrialRecord:
    """A container-backend record of ``version``; any field can be overridden."""
    image = f"moby/buildkit:{version}-rootless"
    values: dict[str, Any] = dict(
        run_id="r",
        trial=trial,
        started_at="2024-05-01T10:00:00+00:00",
        duration_s=0.5,
        backend="container",
        image=image,
        version=version,
        cache_image=image,
        cache_version=version,
        cache_type="registry",
        mode="daemonless",
        reset_freq=1,
        since_reset=1,
        reset_index=0,
        lane=0,
        outcome=Outcome(outcome),
        cache_hits=2,
    )
    values.update(overrides)
    return TrialRecord(**values)
