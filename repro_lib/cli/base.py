"""The command group, error handling and exit codes every command shares.

Errors map to exit codes here only.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from .. import __version__
from ..errors import BuildFailed, InfraError, MissingRequirement, ReproError, UsageError

#: one table from error class to exit code; 1 is reserved for "a missing layer was seen"
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (UsageError, 2),
    (MissingRequirement, 2),
    (InfraError, 2),
    (BuildFailed, 2),
    (ReproError, 2),
]


EXIT_MISSING_LAYER = 1


EXIT_INTERRUPTED = 130


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C so every context manager removes what it made.
    raise KeyboardInterrupt(f"signal {signum}")


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo(
                "repro-lib: interrupted; removed what this run made, kept recorded trials", err=True
            )
            sys.exit(EXIT_INTERRUPTED)
        except ReproError as exc:
            code = next(c for cls, c in EXIT_CODES if isinstance(exc, cls))
            click.echo(f"repro-lib: error: {exc.one_line()}", err=True)
            sys.exit(code)

    return wrapper


def client_for(engine_host: str | None):
    from ..lab import connect

    return connect(engine_host)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="repro-lib")
def main() -> None:
    """buildkit-repro lab: run many trials of BuildKit's missing-layer bug and report the evidence."""


def positive(name: str) -> Callable[[click.Context, click.Parameter, int], int]:
    def check(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value is not None and value < 1:
            raise click.BadParameter(f"must be at least 1 (got {value})")
        return value

    return check


def split_csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()] or [""]


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
