"""Progress display for long runs: a bar per batch, tqdm.auto so notebooks get widgets."""

from __future__ import annotations

import sys
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
