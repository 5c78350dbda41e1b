"""Progress display for long runs: a bar per batch, tqdm.auto so notebooks get widgets."""

from __future__ import annotations

import sys
import threading
from typing import Any

from .records import Outcome, TrialRecord


class BatchProgress:
    """A progress bar that appears once the batch has passed its checks."""

    def __init__(
        self, total: int, label: str, *, enabled: bool = True, position: int | None = None
    ) -> None:
        self.total, self.label, self.enabled, self.position = total, label, enabled, position
        self._bar: Any = None
        self.failures = self.errors = 0

    @property
    def bar(self) -> Any:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.label,
                unit="try",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=not self.enabled,
                position=self.position,
                leave=True,
            )
        return self._bar

    def phase(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def record(self, record: TrialRecord) -> None:
        self.failures += record.outcome is Outcome.MISSING_LAYER
        self.errors += record.outcome in (Outcome.BUILD_ERROR, Outcome.INFRA_ERROR)
        self.bar.set_postfix_str(f"missing={self.failures} errors={self.errors}")
        self.bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class SweepProgress:
    """One overall bar for a sweep plus one status line per lane."""

    def __init__(
        self, *, total: int, done: int, lanes: int, label: str, enabled: bool = True
    ) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self.overall = tqdm(
            total=total,
            initial=done,
            desc=label,
            unit="try",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not enabled,
            position=0,
        )
        self.lanes = [
            tqdm(
                total=0,
                desc=f"lane {i}",
                bar_format="{desc}: {postfix}",
                file=sys.stderr,
                disable=not enabled,
                position=i + 1,
                leave=False,
            )
            for i in range(lanes)
        ]
        self.counts = [[0, 0, 0, ""] for _ in range(lanes)]  # done, total, failures, cell
        self.hosts = [""] * lanes  # on a cluster: the host running the line's cell
        self.failures = 0

    def lane(self, lane: int, cell: str, done: int, total: int, *, host: str = "") -> None:
        with self._lock:
            self.counts[lane] = [done, total, 0, cell]
            self.hosts[lane] = host
            self._show(lane)

    def record(self, lane: int, record: TrialRecord) -> None:
        with self._lock:
            self.counts[lane][0] += 1
            if record.outcome is Outcome.MISSING_LAYER:
                self.counts[lane][2] += 1
                self.failures += 1
            self.overall.set_postfix_str(f"missing={self.failures}")
            self.overall.update(1)
            self._show(lane)

    def skip(self, n: int) -> None:
        with self._lock:
            if n > 0:
                self.overall.update(n)

    def _show(self, lane: int) -> None:
        done, total, failures, cell = self.counts[lane]
        where = self.hosts[lane] or f"lane {lane}"
        self.lanes[lane].set_description_str(f"{where}: {cell} {done}/{total} missing={failures}")

    def close(self) -> None:
        for bar in self.lanes:
            bar.close()
        self.overall.close()
