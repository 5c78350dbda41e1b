"""The public reproduction script's environment variables as `repro-lib reproduce` defaults.

People arrive from ``test.sh`` of buildkit-issue-2198-repro, which is driven by
environment variables. It reads ``BUILDKIT_IMAGE``, ``RETRIES`` and
``CACHE_RESET_FREQ`` as ``${VAR:-default}``, so an empty value means the
default, and tests ``NO_CLEANUP``, ``USE_LOCAL_CACHE``, ``SKIP_CREATE_CACHE`` and
``SKIP_TESTS`` with ``[ -n "$VAR" ]``, so any non-empty value, ``0`` included,
turns them on. Here each fills the matching option unless that option is on the
command line; what was taken is said, and recorded in the run's command, because
a setting that changes the measurement must never be silent.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError


def _count(name: str, raw: str) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise UsageError(
            f"{name}={raw!r} is not a whole number", hint=f"set {name} to 1 or more, or unset it"
        )
    if int(text) < 1:
        raise UsageError(f"{name}={raw!r} must be at least 1", hint=f"set {name} to 1 or more")
    return int(text)


def _image(name: str, raw: str) -> str:
    if raw != raw.strip() or not raw.strip() or any(c.isspace() for c in raw):
        raise UsageError(
            f"{name}={raw!r} is not an image reference",
            hint=f"e.g. {name}=moby/buildkit:v0.9.1-rootless",
        )
    return raw


@dataclass(frozen=True)
class Variable:
    """One variable of test.sh and the `reproduce` option it fills."""

    name: str
    param: str  # the click parameter's name
    option: str  # the option as typed
    parse: Callable[[str, str], Any]  # (name, raw value) -> the option's value

    def as_option(self, value: Any) -> str:
        return self.option if value is True or " " in self.option else f"{self.option} {value}"


VARIABLES = (
    Variable("BUILDKIT_IMAGE", "image", "--image", _image),
    Variable("RETRIES", "tries", "--tries", _count),
    Variable("CACHE_RESET_FREQ", "reset_freq", "--reset-freq", _count),
    Variable("NO_CLEANUP", "no_cleanup", "--no-cleanup", lambda n, raw: True),
    Variable("USE_LOCAL_CACHE", "cache", "--cache local", lambda n, raw: "local"),
    Variable("SKIP_CREATE_CACHE", "skip_create_cache", "--skip-create-cache", lambda n, raw: True),
    Variable("SKIP_TESTS", "skip_tests", "--skip-tests", lambda n, raw: True),
)
NAMES = tuple(v.name for v in VARIABLES)


def set_names(environ: Mapping[str, str]) -> list[str]:
    """The variables set to a non-empty value (test.sh treats an empty one as unset)."""
    return [name for name in NAMES if environ.get(name)]


@dataclass
class FromEnvironment:
    """What the variables did to one command line."""

    applied: list[tuple[Variable, str, Any]]  # (variable, raw value, option value)
    overridden: list[tuple[Variable, str]]  # set, but its option was on the command line

    def describe(self) -> str:
        """One line for the top of the summary; empty when no variable is set."""
        parts = [f"{v.name}={raw} → {v.as_option(value)}" for v, raw, value in self.applied]
        parts += [f"{v.name} overridden by {v.option.split()[0]}" for v, _ in self.overridden]
        return "from test.sh's environment: " + ", ".join(parts) if parts else ""

    def command_prefix(self) -> str:
        """``VAR=value `` for each variable taken, so the recorded command reruns the batch."""
        return "".join(f"{v.name}={shlex.quote(raw)} " for v, raw, _ in self.applied)


def apply(
    params: dict[str, Any], on_command_line: Callable[[str], bool], environ: Mapping[str, str]
) -> FromEnvironment:
    """Fill ``params`` from the variables wherever the command line did not give the option.

    Raises:
        UsageError: a variable's value is not a valid value of its option (one line
            naming the variable).
    """
    result = FromEnvironment([], [])
    for variable in VARIABLES:
        raw = environ.get(variable.name, "")
        if not raw:
            continue
        if on_command_line(variable.param):
            result.overridden.append((variable, raw))
            continue
        value = variable.parse(variable.name, raw)
        params[variable.param] = value
        result.applied.append((variable, raw, value))
    return result


def blame(exc: UsageError, taken: FromEnvironment) -> UsageError:
    """A usage error about options some variable set, with that variable named."""
    names = ", ".join(f"{v.name}={raw}" for v, raw, _ in taken.applied)
    if not names:
        return exc
    return UsageError(f"{exc} (set from the environment: {names})", hint=exc.hint)
