"""Commands that read stores: report, merge, evidence."""

from __future__ import annotations

import click

from ..errors import UsageError
from .base import handle_errors, main
from .options import store_option


@main.command()
@store_option()
@click.option(
    "--sweep",
    "sweep_id",
    default=None,
    help="Only this sweep's trials, and the culprit searches with a probe in it (or of this id).",
)
@click.option("--run", "run_id", default=None, help="Only this run's trials.")
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory for report.md, the PNG figures and the trials file (default: reports/<sweep|run|all>).",
)
@click.option(
    "--command",
    "command",
    default=None,
    help="The command line to show as the way to reproduce the data.",
)
@click.option(
    "--github",
    is_flag=True,
    help="Also write comment.md (fits one GitHub issue comment: verdicts, Mermaid charts, "
    "the rest collapsed) and findings.zip (report, figures, trials, evidence; under 25 MB).",
)
@click.option(
    "--evidence",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --github: the most failure evidence bundles in findings.zip.",
)
@handle_errors
def report(
    store_path: str | None,
    sweep_id: str | None,
    run_id: str | None,
    out_dir: str | None,
    command: str | None,
    github: bool,
    evidence: int,
) -> None:
    """Write a Markdown report (plus PNG plots and the raw trials) for an issue comment.

    The raw trials are trials.csv, or trials.parquet above 50,000 trials. Culprit
    searches (repro-lib bisect) get a Culprit section: with --sweep, the searches
    of that id or with a probe in that sweep.
    """
    from pathlib import Path

    from ..config import Paths
    from ..report import write_report
    from ..report_culprit import select_searches
    from ..store import Store

    paths = Paths.from_env()
    store = Path(store_path) if store_path else paths.store
    out = Path(out_dir) if out_dir else paths.reports / (sweep_id or run_id or "all")
    with Store(store, read_only=True) as st:  # a missing store: one line, exit 2
        searches = select_searches(st.searches(), sweep=sweep_id, run=run_id)
        named = [r for r in searches if r.search_id == sweep_id]
        if named and st.sweep(named[0].search_id) is not None:
            named = []  # a sweep of that id exists: it is what --sweep means
    sweeps: str | list[str] | None = sweep_id
    scope = None
    if named and named[0].probes:
        # a culprit search's id: the report covers the trials of its probes' sweeps
        sweeps = [p.sweep_id for p in named[0].probes]
        scope = f"culprit search `{sweep_id}` ({len(sweeps)} probe sweeps)"
    written = write_report(
        store,
        out,
        sweep=sweeps,
        run=run_id,
        command=command,
        github=github,
        evidence=evidence,
        searches=searches,
        scope=scope,
    )
    click.echo(str(written))
    if github:
        click.echo(str(out / "comment.md"))
        click.echo(str(out / "findings.zip"))


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@handle_errors
def merge(out: str, stores: tuple[str, ...]) -> None:
    """Merge results STORES (shards, other machines) into OUT, without loss or double counting.

    Copies runs, trials, sweeps and any other table, and records in OUT's
    provenance table which file each run came from. Merging a store again adds
    nothing. When two stores hold one trial with different content, or shards of
    one sweep ran different plans, nothing is written and the exit status is 2.
    """
    from ..merge import merge_stores

    result = merge_stores(out, list(stores))
    for s in result.sources:
        click.echo(
            f"{s.source}: {s.runs} runs, {s.trials_added} trials added, "
            f"{s.trials_present} already in {out}"
        )
    click.echo(f"{out}: {result.trials_added} trials added")


@main.command()
@click.argument("run_id")
@click.argument("trial", required=False, type=int)
@store_option()
@handle_errors
def evidence(run_id: str, trial: int | None, store_path: str | None) -> None:
    """Print the evidence bundles of RUN_ID's failures (or of one TRIAL): what was lost,
    what the imported cache held, and the files kept."""
    from pathlib import Path

    from ..config import Paths
    from ..forensics import find_run_dir
    from ..records import Outcome
    from ..store import Store

    paths = Paths.from_env()
    store = Path(store_path) if store_path else paths.store
    with Store(store, read_only=True) as st:  # a missing store: one line, exit 2
        records = [r for r in st.trials(run_id) if trial is None or r.trial == trial]
    if not records:
        raise UsageError(
            f"no trial {trial} of run {run_id} in {store}"
            if trial
            else f"no run {run_id!r} in {store}",
            hint="run ids are printed by reproduce and sweep, and listed by report",
        )
    failed = [r for r in records if r.outcome is Outcome.MISSING_LAYER]
    if not failed:
        click.echo(
            f"trial {trial} of {run_id} was {records[0].outcome.value}: no evidence bundle"
            if trial
            else f"run {run_id}: no missing-layer failure among {len(records)} tries"
        )
        return
    run_dir = find_run_dir(paths.runs, run_id)
    for r in failed:
        bundle = run_dir / r.evidence_path if run_dir and r.evidence_path else None
        if bundle is not None and not bundle.is_dir():
            bundle = None
        where = (
            f"bundle not on this machine; host {r.host or '(not recorded)'} keeps it in its"
            f" data/runs/*/{run_id}/{r.evidence_path}"
            if r.evidence_path
            else "no bundle recorded"
        )
        click.echo(f"== {run_id} trial {r.trial}: {bundle or where}")
        lost = bundle / "what-was-lost.md" if bundle else None
        if lost is not None and lost.is_file():
            click.echo(lost.read_text())
        else:
            click.echo(f"lost steps: {'; '.join(r.lost_steps) or 'not recorded'}")
            click.echo(f"missing: {', '.join(r.missing)}")
