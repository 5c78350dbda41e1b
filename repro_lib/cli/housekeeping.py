"""Commands that tidy up and manage engines: clean, engine start/stop/status."""

from __future__ import annotations

import click

from ..errors import MissingRequirement
from .base import client_for, handle_errors, main


@main.command(name="clean")
@click.option(
    "--run",
    "run_id",
    default=None,
    help="Remove everything of this run or sweep id (even if its process lives).",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove everything labelled by the lab, live runs included.",
)
@click.option("--engine-host", default=None, envvar="DOCKER_HOST", help="Docker engine to clean.")
@handle_errors
def clean(run_id: str | None, everything: bool, engine_host: str | None) -> None:
    """Remove containers, volumes and scratch files that lab runs left behind.

    Without options only objects of runs whose process is gone are removed, so
    a run in progress is never disturbed.
    """
    from ..batch import reap_dead_run_dirs, remove_scratch
    from ..config import Paths
    from ..dockerd import reap_orphans
    from ..lab import sweep

    client = client_for(engine_host)
    result = sweep(client, run_id, include_live=everything)
    paths = Paths.from_env()
    dirs = reap_dead_run_dirs(paths)
    engines = reap_orphans(paths)
    if run_id:
        remove_scratch(paths.run_dir(run_id))
    click.echo(
        f"removed {len(result.containers)} containers, {len(result.volumes)} volumes, "
        f"{len(result.images)} images, scratch files of {len(dirs)} runs, {len(engines)} lane engines"
        + (f"; left {len(result.skipped_live)} objects of live runs" if result.skipped_live else "")
        + (
            f"; left {len(result.skipped_kept)} objects of --no-cleanup runs (use --run or --all)"
            if result.skipped_kept
            else ""
        )
    )


main.add_command(clean, name="cleanup")


@main.group()
def engine() -> None:
    """A private Docker engine the lab starts (own data root and socket, host networking)."""


@engine.command(name="start")
@click.option("--name", default="default", show_default=True, help="Name of the private engine.")
@handle_errors
def engine_start(name: str) -> None:
    """Start a private dockerd and print its DOCKER_HOST (the engine backend may prune it)."""
    from .. import dockerd as private
    from ..config import Paths

    started = private.start(Paths.from_env(), name)
    click.echo(started.host)


@engine.command(name="stop")
@click.option("--name", default="default", show_default=True, help="Name of the private engine.")
@handle_errors
def engine_stop(name: str) -> None:
    """Stop a private dockerd started by `repro-lib engine start`."""
    from .. import dockerd as private
    from ..config import Paths

    click.echo("stopped" if private.stop(Paths.from_env(), name) else "not running")


@engine.command(name="status")
@click.option("--name", default="default", show_default=True, help="Name of the private engine.")
@handle_errors
def engine_status(name: str) -> None:
    """Print the DOCKER_HOST of a running private engine, or exit 2."""
    from .. import dockerd as private
    from ..config import Paths

    found = private.load(Paths.from_env(), name)
    if found is None or not found.alive():
        raise MissingRequirement(
            f"private engine {name!r} is not running", hint="repro-lib engine start"
        )
    click.echo(found.host)
