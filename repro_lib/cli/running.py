"""Commands that run builds: reproduce, sweep, bench (bisect is in ``culprit``)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

import click

from ..errors import UsageError
from .base import EXIT_MISSING_LAYER, client_for, handle_errors, main, pct, positive, split_csv
from .options import batch_options, mode_option, options_from, sweep_plan


@main.command()
@click.option(
    "--image",
    default="moby/buildkit:v0.9.0-rootless",
    show_default=True,
    help="BuildKit image that imports the cache (container backend).",
)
@click.option(
    "--cache-image",
    default=None,
    help="BuildKit image that exports the cache (default: --image); differing images test the cross-version case.",
)
@click.option(
    "--tries",
    default=20,
    show_default=True,
    type=int,
    callback=positive("tries"),
    help="Import builds to run.",
)
@click.option(
    "--reset-freq",
    default=4,
    show_default=True,
    type=int,
    callback=positive("reset-freq"),
    help="Start from a fresh BuildKit state every K tries (the first try always starts fresh).",
)
@click.option(
    "--cache",
    type=click.Choice(["registry", "local", "inline"]),
    default=None,
    help="Cache type: registry (default) or local for the container backend; inline for the engine backend.",
)
@mode_option
@batch_options
@handle_errors
def reproduce(
    image: str,
    cache_image: str | None,
    tries: int,
    reset_freq: int,
    cache: str | None,
    mode: str,
    **kwargs: Any,
) -> None:
    """Run one reproduction batch: export the cache once, then TRIES import builds.

    The public test.sh's variables BUILDKIT_IMAGE, RETRIES, CACHE_RESET_FREQ,
    NO_CLEANUP, USE_LOCAL_CACHE, SKIP_CREATE_CACHE and SKIP_TESTS are defaults of
    --image, --tries, --reset-freq, --no-cleanup, --cache local,
    --skip-create-cache and --skip-tests; options given here win.

    Exit status: 0 no missing layer seen, 1 a missing layer was seen, 2 usage or
    environment error, 130 interrupted.
    """
    from .. import testsh_env
    from ..batch import reproduce as run_reproduction

    ctx = click.get_current_context()
    given = {"image": image, "tries": tries, "reset_freq": reset_freq, "cache": cache, **kwargs}
    from_env = testsh_env.apply(
        given,
        lambda p: ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE,
        os.environ,
    )
    image, tries, reset_freq, cache = (
        given.pop(k) for k in ("image", "tries", "reset_freq", "cache")
    )
    if given["backend"] == "container" and cache == "inline":
        raise UsageError("--cache inline needs --backend engine")
    options = options_from(
        given,
        image=image,
        cache_image=cache_image,
        mode=mode,
        tries=tries,
        reset_freq=reset_freq,
        cache=cache,
    )
    options.command = from_env.command_prefix() + options.command
    try:
        options.validate()
    except UsageError as exc:
        raise testsh_env.blame(exc, from_env) from exc
    client = client_for(kwargs["engine_host"])
    summary = run_reproduction(client, options, store_path=kwargs["store_path"])
    _print_summary(
        {**summary.as_dict(), "from_environment": from_env.describe()}, kwargs["as_json"]
    )
    sys.exit(EXIT_MISSING_LAYER if summary.failures else 0)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    lines = [summary["from_environment"]] if summary.get("from_environment") else []
    lines += [
        f"run {summary['run_id']}  backend={summary['backend']} mode={summary['mode']} image={summary['image']}"
        + (
            f" cache_image={summary['cache_image']}"
            if summary["cache_image"] != summary["image"]
            else ""
        ),
        f"cache={summary['cache_type']} reset every {summary['reset_freq']} tries",
        f"tries: {summary['tries']}  missing-layer failures: {summary['failures']}  "
        f"build errors: {summary['build_errors']}  infra errors: {summary['infra_errors']}"
        + (
            f"  tries without cache hits: {summary['no_cache_tries']}"
            if summary.get("no_cache_tries")
            else ""
        ),
        f"failure rate: {pct(summary['rate'])}  (95% interval {pct(summary['ci_low'])} – "
        f"{pct(summary['ci_high'])} with its {summary.get('cycles', 0)} reset "
        f"cycle{'' if summary.get('cycles') == 1 else 's'} as clusters; "
        f"Wilson's, which assumes independent tries: {pct(summary.get('wilson_low', 0.0))} – "
        f"{pct(summary.get('wilson_high', 1.0))})",
    ]
    if summary["failure_positions"]:
        lines.append(
            "failures at positions since reset: "
            + ", ".join(map(str, summary["failure_positions"]))
        )
    if summary.get("stopped"):
        lines.append(f"stopped early: {summary['stopped']}")
    if summary.get("kept"):
        lines.append(
            "kept (--no-cleanup): " + ", ".join(f"{k}={v}" for k, v in summary["kept"].items() if v)
        )
    lines.append(f"logs: {summary['work_dir']}/logs")
    if as_json:
        click.echo("\n".join(lines), err=True)
        click.echo(json.dumps(summary, default=str))
    else:
        click.echo("\n".join(lines))


def _needs_local_engine(cluster: str | None, backend: str) -> bool:
    """Remote workers use their own engines; a local cluster on the engine backend
    starts a private engine per worker from the local one."""
    return cluster is None or (cluster == "local" and backend != "container")


def _print_cells(outcome: Any, as_json: bool) -> None:
    rows = outcome.table()
    header = f"{'cell':<72} {'fail/tries':>10} {'rate':>7} {'95% interval':>17} {'to verdict':>10}  stopped"
    lines = [f"sweep {outcome.sweep_id} ({outcome.status})", header]
    for r in rows:
        lines.append(
            f"{r['cell']:<72} {r['failures']:>4}/{r['tries']:<5} {pct(r['rate']):>7} "
            f"{pct(r['ci_low']) + ' – ' + pct(r['ci_high']):>17} {r['tries_to_verdict']:>10}  {r['stopped'] or '-'}"
        )
    lines.append(f"resume or extend with: repro-lib sweep --resume {outcome.sweep_id}")
    if as_json:
        click.echo("\n".join(lines), err=True)
        click.echo(
            json.dumps(
                {"sweep_id": outcome.sweep_id, "status": outcome.status, "cells": rows}, default=str
            )
        )
    else:
        click.echo("\n".join(lines))


@main.command()
@click.option(
    "--versions",
    default=None,
    help="Comma-separated BuildKit versions (v0.9.0 = moby/buildkit:v0.9.0-rootless) or image names.",
)
@click.option(
    "--cache-versions",
    default=None,
    help="Versions that export the cache; every --versions entry imports each (cross-version cells).",
)
@click.option(
    "--reset-freq",
    default=None,
    help="Comma-separated reset frequencies, e.g. 1,2,4,8.  [default: 4]",
)
@click.option(
    "--cache", default=None, help="Comma-separated cache types (registry,local; engine: inline)."
)
@click.option(
    "--mode", default=None, help="Comma-separated modes: daemonless,daemon.  [default: daemonless]"
)
@click.option(
    "--tries",
    default=None,
    type=int,
    help="Tries per cell (the most, with --until-confident).  [default: 100]",
)
@click.option(
    "--lanes",
    default=None,
    type=int,
    help="Cells run in parallel, each lane with its own BuildKit state.  [default: CPU cores]",
)
@click.option(
    "--until-confident",
    is_flag=True,
    default=None,
    help="Stop a cell once a failure was seen (interval excludes 0) or the failure probability's upper bound is below --max-rate.",
)
@click.option(
    "--max-rate",
    default=None,
    type=float,
    help="Upper bound that makes a clean cell decisive.  [default: 0.01]",
)
@click.option(
    "--plan",
    "plan_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML plan file with the same keys (versions, reset_freq, cache, mode, tries, ...); options given here win.",
)
@click.option(
    "--resume",
    "resume_id",
    default=None,
    help="Continue a sweep: run only the trials its cells are missing.",
)
@click.option(
    "--replicates",
    default=None,
    type=int,
    help="Identical copies of every cell (spreads one configuration over lanes).  [default: 1]",
)
@click.option(
    "--cluster",
    default=None,
    help="Run cells on a Dask cluster of Docker hosts: a scheduler address (tcp://HOST:8786, tls://…) or `local` (a LocalCluster, one worker per lane). Needs repro-lib[cluster].",
)
@click.option(
    "--shard",
    "shard_text",
    default=None,
    metavar="K/N",
    help="Run only the K-th of N deterministic parts of the cells (a CI matrix job); merge the stores with `repro-lib merge`.",
)
@click.option(
    "--sweep-id",
    "sweep_id",
    default=None,
    help="Id of the sweep (shards of one sweep share it). Default: new per run; with --shard, derived from the plan.",
)
@batch_options
@handle_errors
def sweep(
    versions,
    cache_versions,
    reset_freq,
    cache,
    mode,
    tries,
    lanes,
    until_confident,
    max_rate,
    plan_file,
    resume_id,
    replicates,
    cluster,
    shard_text,
    sweep_id,
    **kwargs: Any,
) -> None:
    """Run every cell of a grid of versions × cache versions × reset frequencies × caches × modes.

    All cells land in one store under one sweep id. Exit status: 0 no missing
    layer, 1 a missing layer was seen, 2 usage or environment error, 130 interrupted.
    """
    from ..config import Paths
    from ..plan import (
        check_sweep_id,
        parse_shard,
        shard_cells,
        shard_to_resume,
        sweep_id_for,
        with_allow_prune,
    )
    from ..store import Store
    from ..sweep import resume_plan, run_sweep
    from ..testsh_env import set_names

    if ignored := set_names(os.environ):
        click.echo(
            f"repro-lib: warning: sweep ignores {', '.join(ignored)} (test.sh's variables are "
            "read by `reproduce` only; a sweep takes --versions, --tries, --reset-freq, --cache)",
            err=True,
        )
    paths = Paths.from_env()
    store_path = kwargs["store_path"] or paths.store
    shard = parse_shard(shard_text) if shard_text is not None else None
    if sweep_id is not None:
        check_sweep_id(sweep_id)
    if resume_id and sweep_id and sweep_id != resume_id:
        raise UsageError("--resume already names the sweep", hint="drop --sweep-id")
    if resume_id:
        plan, command = resume_plan(store_path, resume_id)
        with Store(store_path) as store:
            recorded = [r.get("shard") for r in store.runs(resume_id)]
            recorded.append((store.sweep(resume_id) or {}).get("plan", {}).get("shard"))
        shard = shard_to_resume(resume_id, recorded, shard)
        plan = with_allow_prune(plan, bool(kwargs["allow_prune"]))
        if lanes:
            plan.lanes = lanes
    else:
        if lanes is not None and lanes < 1:
            raise UsageError(f"--lanes must be at least 1 (got {lanes})")
        axes = {
            "versions": split_csv(versions),
            "cache_versions": split_csv(cache_versions),
            "reset_freq": split_csv(reset_freq),
            "cache": split_csv(cache),
            "mode": split_csv(mode),
            "tries": tries,
            "lanes": lanes,
            "until_confident": until_confident,
            "max_rate": max_rate,
            "replicates": replicates,
        }
        plan = sweep_plan(kwargs, plan_file, axes)
        command = shlex.join(["repro-lib", *sys.argv[1:]])
        if sweep_id is None and shard is not None:
            sweep_id = sweep_id_for(plan)  # every shard of this plan gets the same id
    if shard is not None and not shard_cells(plan, shard):  # no engine, registries or store
        note = (
            f"nothing to run in shard {shard[0]}/{shard[1]}: the plan has {len(plan.cells())} cells"
        )
        click.echo(note, err=kwargs["as_json"])
        if kwargs["as_json"]:
            click.echo(json.dumps({"sweep_id": resume_id or sweep_id, "status": note, "cells": []}))
        sys.exit(0)
    client = (
        client_for(kwargs["engine_host"]) if _needs_local_engine(cluster, plan.backend) else None
    )
    outcome = run_sweep(
        client,
        plan,
        sweep_id=resume_id or sweep_id,
        store_path=store_path,
        paths=paths,
        command=command,
        shard=shard,
        cluster=cluster,
    )
    _print_cells(outcome, kwargs["as_json"])
    sys.exit(EXIT_MISSING_LAYER if outcome.failures else 0)


@main.command()
@click.option(
    "--image",
    default=None,
    help="BuildKit image (container backend). Default: moby/buildkit:v0.9.0-rootless.",
)
@click.option(
    "--tries",
    default=40,
    show_default=True,
    type=int,
    callback=positive("tries"),
    help="Tries per configuration (split over its lanes).",
)
@click.option(
    "--reset-freq",
    default=4,
    show_default=True,
    type=int,
    callback=positive("reset-freq"),
    help="Reset frequency of every configuration.",
)
@click.option(
    "--lanes",
    default=2,
    show_default=True,
    type=int,
    callback=positive("lanes"),
    help="Lanes of the parallel configurations.",
)
@click.option(
    "--cluster",
    default=None,
    help="Also measure a Dask cluster of Docker hosts: a scheduler address (tcp://HOST:8786, tls://…) or `local` (a LocalCluster of --lanes workers). Needs repro-lib[cluster].",
)
@batch_options(store="data/raw/bench.sqlite")
@handle_errors
def bench(
    image: str | None, tries: int, reset_freq: int, lanes: int, cluster: str | None, **kwargs: Any
) -> None:
    """Measure trials per minute of the public script's procedure vs the lab's modes and lanes.

    Prints, for each configuration measured in this one run, its ratio to the
    baseline, its failure rate (with Fisher's test against the baseline) and a
    per-try time breakdown. Results go to data/raw/bench.sqlite by default.
    """
    from ..bench import as_dicts, markdown, run_bench
    from ..config import Paths

    paths = Paths.from_env()
    backend = kwargs["backend"]
    versions = [image or "moby/buildkit:v0.9.0-rootless"] if backend == "container" else ["engine"]
    plan = sweep_plan(kwargs, None, {"versions": versions})
    client = client_for(kwargs["engine_host"])
    store_path = kwargs["store_path"] or paths.raw / "bench.sqlite"
    rows = run_bench(
        client,
        cluster=cluster,
        backend=backend,
        versions=versions,
        tries=tries,
        reset_freq=reset_freq,
        lanes=lanes,
        batch=dict(plan.batch),
        store_path=store_path,
        paths=paths,
    )
    header = (
        f"Throughput, {backend} backend, {tries} tries per configuration, reset every {reset_freq}, "
        f"on {os.cpu_count()} cores (`{shlex.join(['repro-lib', *sys.argv[1:]])}`):\n"
    )
    text = markdown(rows, header=header)
    if kwargs["as_json"]:
        click.echo(text, err=True)
        click.echo(json.dumps(as_dicts(rows)))
    else:
        click.echo(text)
