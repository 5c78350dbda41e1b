"""One exception hierarchy for the lab, mapped to exit codes by the CLI.

Docker SDK errors are translated into these classes at the boundary of the
module that called the SDK, so callers catch ``ReproError`` and nothing else.
"""

from __future__ import annotations


class ReproError(Exception):
    """Root of every error the lab raises on purpose."""

    #: a one-line hint telling the user what to do; shown after the message
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text} ({self.hint})" if self.hint else text


class UsageError(ReproError):
    """A bad option value or a bad plan/scenario: the user must change the command."""


class MissingRequirement(ReproError):
    """Something the run needs is absent (an image offline, the engine, a binary).

    Tests treat it as a reason to skip, the CLI as an environment error.
    """


class InfraError(ReproError):
    """Registry, engine, volume or readiness trouble: not evidence about BuildKit."""

    def __init__(self, message: str, *, hint: str = "", logs: str = "") -> None:
        super().__init__(message, hint=hint)
        self.logs = logs


class ReadinessTimeout(InfraError):
    """A service did not become ready before its deadline."""


class BuildFailed(ReproError):
    """BuildKit itself failed; carries the tail of its log as evidence."""

    def __init__(self, message: str, *, log_tail: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.exit_code = exit_code


class VerifyError(ReproError):
    """The output tarball could not be read at all (corrupt, empty, absent)."""


class PruneRefused(UsageError):
    """Pruning the builder cache of an engine the lab did not start needs consent."""


class PrivilegesRefused(UsageError):
    """The engine or its kernel refuses the privileges a BuildKit container asks for.

    No try could run on such a host, so the batch stops at once (instead of
    recording one build or infra error per try) with the known ways out.
    """
