"""The culprit search command: ``repro-lib bisect`` over released versions or commits."""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from .base import client_for, handle_errors, main, positive, split_csv
from .options import batch_options, mode_option, sweep_plan

#: options of the commit mode only (a mix with --versions is a usage error)
COMMIT_OPTIONS = ("repo", "all_commits", "build", "direction")
#: options of the search in both modes
SEARCH_OPTIONS = ("confidence", "max_tries", "cycles_per_probe", "cluster", "search_id")
#: options of the old deflaked version bisection: kept working in version mode (with a
#: warning), refused in commit mode
OLD_VERSION_OPTIONS = ("tries", "max_rate")


@main.command()
@click.option(
    "--good", default=None, help="A version or commit known to be unaffected (the bug absent)."
)
@click.option(
    "--bad", default=None, help="A version or commit known to be affected (the bug present)."
)
@click.option(
    "--versions",
    "version_list",
    default=None,
    help="Version mode: ordered, comma-separated versions (or images) holding --good and --bad; "
    "the candidates are the versions after the first of the two up to the other.",
)
@click.option(
    "--repo",
    default=None,
    type=click.Path(file_okay=False),
    help="Commit mode: the git repository whose commits --good..--bad are the candidates.",
)
@click.option(
    "--all-commits",
    is_flag=True,
    help="Commit mode: every commit in the range, not only the first-parent ones (merges).",
)
@click.option(
    "--build",
    default=None,
    metavar="CMD",
    help="Commit mode: shell command run in a clean worktree of a commit to build its BuildKit "
    "image; must tag {image}; may use {commit} and {short}. An existing {image} is reused; a "
    "failing command marks the commit unbuildable (skipped, like `git bisect skip`).",
)
@click.option(
    "--direction",
    type=click.Choice(["broke", "fixed"]),
    default="broke",
    show_default=True,
    help="Commit mode: look for the commit that broke it (--good is older) or fixed it "
    "(--bad is older). Version mode takes it from the order of --good and --bad in --versions.",
)
@click.option(
    "--confidence",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Stop once one candidate's posterior reaches this.",
)
@click.option(
    "--max-tries",
    default=2000,
    show_default=True,
    type=int,
    callback=positive("max-tries"),
    help="Stop after this many tries over all probes.",
)
@click.option(
    "--cycles-per-probe",
    default=5,
    show_default=True,
    type=int,
    callback=positive("cycles-per-probe"),
    help="Reset cycles of --reset-freq tries each probe runs.",
)
@click.option(
    "--resume",
    "resume_id",
    default=None,
    help="Continue a killed search by its id: recorded probes and builds are not redone.",
)
@click.option(
    "--cluster",
    default=None,
    help="Run the probes on a Dask cluster like `sweep --cluster` (the workers' engines need "
    "the candidates' images).",
)
@click.option(
    "--search-id",
    default=None,
    help="Id of the new search (its probes' sweeps are <id>-p001, ...). Default: new per run.",
)
@click.option(
    "--reset-freq", default=4, show_default=True, type=int, help="Reset frequency of every probe."
)
@click.option(
    "--cache", default=None, help="Cache type of every probe (default: the backend's first)."
)
@mode_option
@click.option(
    "--tries",
    default=None,
    type=int,
    callback=positive("tries"),
    help="Version mode, deprecated: the tries of each probe, taken as --cycles-per-probe "
    "TRIES / --reset-freq (rounded up).",
)
@click.option(
    "--max-rate",
    default=None,
    type=float,
    help="Version mode, deprecated and ignored: it made a probe's clean verdict; the search "
    "stops at --confidence.",
)
@batch_options
@handle_errors
def bisect(
    good, bad, version_list, reset_freq, cache, mode, tries, max_rate, **kwargs: Any
) -> None:
    """Find where the missing layer starts (or stops): the version, or the commit.

    Both modes run one Bayesian culprit search over an ordered list of
    candidates. Each probe runs --cycles-per-probe reset cycles of one
    candidate's image as one sweep cell; every cycle of every probe feeds the
    posterior of each candidate being the first changed one, and the next probe
    is the candidate expected to say most. A progress line per probe goes to
    stderr; the search stops at --confidence or --max-tries and ends with a
    line like
      culprit: 1a2b3c4 "subject" (posterior 0.97; 412 tries over 5 probes)
    Everything is in the store after every build and probe; --resume ID
    continues a killed search.

    \b
    Version mode (--versions): the candidates are the released versions (or
    images) after --good up to --bad in list order. When --bad comes first in
    the list the search looks for the first version without the bug (the one
    that fixed it), whichever way the list is sorted. It also prints the
    boundary (the pair around the culprit, in list order) and the affected
    version next to it.

    \b
    Commit mode (--repo): the candidates are the commits after --good up to
    --bad (first-parent unless --all-commits; with --direction fixed, after
    --bad up to --good). Each commit's image is built by --build in a clean
    worktree when the search first wants it, and cached as
    repro-lib-bisect/<repo>:<sha>.

    \b
    Examples:
      repro-lib bisect --versions v0.8.0,v0.9.0,v0.9.1 --bad v0.9.0 --good v0.9.1
      repro-lib bisect --repo ~/src/buildkit --bad v0.9.0 --good v0.9.1 \\
        --direction fixed \\
        --build 'docker buildx build --target rootless -t {image} .'
    """
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

    resume_id = kwargs.pop("resume_id")
    if resume_id is not None:
        _resume_search(resume_id, kwargs, given)
        return
    if reset_freq < 1:
        raise UsageError(f"--reset-freq must be at least 1 (got {reset_freq})")
    if version_list is not None:
        commit_given = [n for n in COMMIT_OPTIONS if given(n)]
        if commit_given:
            raise UsageError(
                f"--{commit_given[0].replace('_', '-')} applies to commit mode (--repo), "
                "not to --versions",
                hint="drop it, or search commits with --repo instead of --versions",
            )
        if tries is not None:
            kwargs["cycles_per_probe"] = _cycles_from_tries(
                tries, reset_freq, given("cycles_per_probe")
            )
        if max_rate is not None:
            _warn(
                "--max-rate is ignored: it made a deflaked probe's clean verdict; the search "
                "now stops at --confidence"
            )
        _search_versions(good, bad, version_list, reset_freq, cache, mode, kwargs)
        return
    if kwargs["repo"] is None:
        raise UsageError(
            "bisect needs --versions (released versions) or --repo (commits)",
            hint="see repro-lib bisect --help",
        )
    version_given = [n for n in OLD_VERSION_OPTIONS if given(n)]
    if version_given:
        raise UsageError(
            f"--{version_given[0].replace('_', '-')} applies to --versions, not to commit mode",
            hint="a commit probe runs --cycles-per-probe reset cycles; --max-tries caps the search",
        )
    _search_commits(good, bad, reset_freq, cache, mode, kwargs)


def _warn(text: str) -> None:
    click.echo(f"repro-lib: warning: {text}", err=True)


def _cycles_from_tries(tries: int, reset_freq: int, cycles_given: bool) -> int:
    """The deprecated per-probe ``--tries`` as whole reset cycles per probe."""
    if cycles_given:
        raise UsageError(
            "--tries and --cycles-per-probe both size a probe",
            hint="drop --tries (deprecated); a probe runs --cycles-per-probe reset cycles",
        )
    cycles = math.ceil(tries / reset_freq)
    _warn(
        f"--tries is deprecated in bisect: each probe runs whole reset cycles; --tries {tries} "
        f"is taken as --cycles-per-probe {cycles} ({cycles * reset_freq} tries at --reset-freq "
        f"{reset_freq}); --max-tries caps the whole search"
    )
    return cycles


def _check_search_id(search_id: str | None) -> None:
    from ..plan import check_sweep_id

    if search_id is None:
        return
    try:
        check_sweep_id(search_id)
    except UsageError:
        raise UsageError(
            f"--search-id {search_id!r} is not a plain name",
            hint="use letters, digits, '.', '_' or '-' (at most 80), e.g. --search-id ci-1234",
        ) from None


def _setup(plan: Any, build: str | None, kwargs: dict[str, Any]) -> Any:
    from ..bisect import SearchSetup
    from ..config import Paths

    paths = Paths.from_env()
    return SearchSetup(
        client=client_for(kwargs["engine_host"]),
        plan=plan,
        cycles_per_probe=kwargs["cycles_per_probe"],
        build=build,
        store_path=Path(kwargs["store_path"] or paths.store),
        paths=paths,
        cluster=kwargs["cluster"],
        command=shlex.join(["repro-lib", *sys.argv[1:]]),
        progress=sys.stderr.isatty(),  # a probe's bar between the search's lines, on a terminal
    )


def _search_versions(good, bad, version_list, reset_freq, cache, mode, kwargs) -> None:
    from ..bisect import start_version_search, version_range

    if good is None or bad is None:
        raise UsageError("--versions needs --good and --bad", hint="both must be in --versions")
    _check_search_id(kwargs["search_id"])
    versions = split_csv(version_list) or []
    axes = {"reset_freq": [reset_freq], "cache": split_csv(cache), "mode": [mode], "lanes": 1}
    plan = sweep_plan(kwargs, None, {**axes, "versions": versions})  # checks every name
    candidates = version_range(versions, good, bad)
    record = start_version_search(
        _setup(plan, None, kwargs),
        candidates,
        confidence=kwargs["confidence"],
        max_tries=kwargs["max_tries"],
        say=lambda line: click.echo(line, err=True),
        search_id=kwargs["search_id"],
    )
    _print_search(record, kwargs["as_json"])


def _search_commits(good, bad, reset_freq, cache, mode, kwargs: dict[str, Any]) -> None:
    from .. import commits
    from ..bisect import commit_range, start_commit_search

    if good is None or bad is None:
        raise UsageError("commit mode needs --good and --bad", hint="e.g. --good v0.9.0 --bad HEAD")
    if kwargs["build"] is None:
        raise UsageError(
            "commit mode needs --build, the command that builds a commit's image",
            hint="e.g. --build 'docker build -t {image} .'",
        )
    _check_search_id(kwargs["search_id"])
    candidates = commit_range(
        kwargs["repo"],
        good,
        bad,
        build=kwargs["build"],
        direction=kwargs["direction"],
        all_commits=kwargs["all_commits"],
    )
    axes = {
        # a stand-in: each probe runs its own candidate's image instead
        "versions": [f"{commits.IMAGE_REPOSITORY}/candidate:any"],
        "reset_freq": [reset_freq],
        "cache": split_csv(cache),
        "mode": [mode],
        "lanes": 1,
    }
    record = start_commit_search(
        _setup(sweep_plan(kwargs, None, axes), kwargs["build"], kwargs),
        candidates,
        confidence=kwargs["confidence"],
        max_tries=kwargs["max_tries"],
        say=lambda line: click.echo(line, err=True),
        search_id=kwargs["search_id"],
    )
    _print_search(record, kwargs["as_json"])


def _resume_search(search_id: str, kwargs: dict[str, Any], given: Any) -> None:
    from ..bisect import resume_search
    from ..config import Paths

    names = ("good", "bad", "version_list", *COMMIT_OPTIONS, *SEARCH_OPTIONS, *OLD_VERSION_OPTIONS)
    settings = [n for n in names if given(n) and n != "cluster"]
    if settings:
        name = "versions" if settings[0] == "version_list" else settings[0].replace("_", "-")
        raise UsageError(
            f"--resume takes the search's settings from the store; --{name} cannot change them",
            hint=f"repro-lib bisect --resume {search_id} [--store PATH] [--cluster ADDR]",
        )
    paths = Paths.from_env()
    record = resume_search(
        search_id,
        client=client_for(kwargs["engine_host"]),
        store_path=Path(kwargs["store_path"] or paths.store),
        paths=paths,
        cluster=kwargs["cluster"],
        progress=sys.stderr.isatty(),
        say=lambda line: click.echo(line, err=True),
        allow_prune=bool(kwargs["allow_prune"]),
    )
    _print_search(record, kwargs["as_json"])


def _print_search(record: Any, as_json: bool) -> None:
    from ..bisect import caveat

    out: dict[str, Any] = {**asdict(record), "statement": record.statement()}
    lines = [caveat(record)]
    if record.kind == "versions":
        # the pair around the culprit, as the deflaked bisection printed it
        before, best = out["boundary"] = list(record.boundary())
        out["first_affected"] = best if record.direction == "broke" else before
        settled = "" if record.status == "confident" else "most probable "
        lines += [
            f"{settled}boundary: {before} | {best}",
            f"{settled}first affected (next to the boundary on the --bad side): "
            f"{out['first_affected']}",
        ]
    lines = [line for line in (*lines, record.statement()) if line]
    if as_json:
        click.echo("\n".join(lines), err=True)
        click.echo(json.dumps(out))
    else:
        click.echo("\n".join(lines))
