"""The report's "Culprit" section: what a culprit search (``repro-lib bisect``) found.

``culprit_section`` renders stored searches (:class:`~repro_lib.culprit.SearchRecord`,
as ``Store.searches`` returns them) as Markdown lines for ``report.md``: per
search, its statement, its settings, the most probable candidates, every probe,
and a PNG of the posterior per candidate (``plot_posterior``) beside the report.

The words follow the evidence. A culprit is named only when one candidate's
posterior reached the search's confidence (status ``confident``); a search that
stopped on its try budget, or has not finished, names no culprit and lists its
best candidates with their posteriors. Every posterior holds under the model of
``repro_lib.culprit`` (one change in the per-cycle failure rate in the range,
independent reset cycles), which the section says.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .culprit import CandidateRow, SearchRecord

__all__ = [
    "culprit_section",
    "figure_name",
    "plot_posterior",
    "select_searches",
    "summary_line",
]

#: Rows of the best-candidates table per search.
TOP_CANDIDATES = 10
#: Candidates named in a line when no culprit is named (and in the comment).
SHORT_LIST = 3
_DPI = 110


def select_searches(
    searches: Iterable[SearchRecord], *, sweep: str | None = None, run: str | None = None
) -> list[SearchRecord]:
    """The searches a report on ``sweep`` (or ``run``) covers; all of them without either.

    A search belongs to a sweep when its ``search_id`` is that sweep id or one of
    its probes ran as that sweep; to a run when one of its probes' sweeps holds it
    (a sweep's run ids are ``<sweep id>-c<index>``).
    """
    chosen = []
    for record in searches:
        sweeps = {p.sweep_id for p in record.probes}
        if sweep is not None and sweep != record.search_id and sweep not in sweeps:
            continue
        if run is not None and not any(run.startswith(f"{s}-c") for s in sweeps):
            continue
        chosen.append(record)
    return chosen


def figure_name(record: SearchRecord) -> str:
    """The PNG file of a search's posterior plot, beside ``report.md``."""
    return "culprit-" + re.sub(r"[^A-Za-z0-9._-]", "_", record.search_id) + ".png"


def summary_line(record: SearchRecord) -> str:
    """One line for the GitHub comment: the statement, then the top candidates."""
    return f"{record.statement()}; {_noun(record)}s by posterior: {_short_list(record)}"


def culprit_section(searches: Sequence[SearchRecord], out: Path) -> list[str]:
    """Markdown lines of the "Culprit" section; writes each search's PNG into ``out``.

    Empty (no lines, no files) when there is no search.
    """
    if not searches:
        return []
    lines = [
        "",
        "## Culprit",
        "",
        "A culprit search (`repro-lib bisect`) probes candidates in an ordered list and "
        "keeps a posterior over which one is the first whose failure rate per reset cycle "
        "changed. A reset cycle counts as failing when any of its tries lost a layer; "
        "every cycle of every probe is reused; the prior is uniform over the candidates. "
        "The posteriors hold under the model: one change in the range and independent "
        "reset cycles. An unbuildable candidate is skipped like `git bisect skip`: never "
        "good, never bad.",
    ]
    for record in searches:
        lines += _search(record, out)
    return lines


def _search(record: SearchRecord, out: Path) -> list[str]:
    noun = _noun(record)
    lines = ["", f"### Search `{record.search_id}`", "", "```text", record.statement(), "```"]
    lines += ["", _verdict(record)]
    lines += ["", *_settings(record)]
    unbuildable = [c for c in record.candidates if c.build == "unbuildable"]
    if unbuildable:
        lines += ["", _unbuildable(record, unbuildable)]
    lines += ["", f"#### Most probable {noun}s", "", _candidates_table(record)]
    hidden = len(record.candidates) - TOP_CANDIDATES
    if hidden > 0:
        lines += ["", f"{hidden} more {noun}s, each less probable, are in the figure."]
    lines += ["", "#### Probes", ""]
    lines.append(_probes_table(record) if record.probes else "No probe has run yet.")
    name = figure_name(record)
    plot_posterior(record).savefig(out / name, dpi=_DPI)
    lines += ["", f"![Posterior per {noun}, search {record.search_id}]({name})"]
    return lines


def _noun(record: SearchRecord) -> str:
    return "commit" if record.kind == "commits" else "version"


def _posterior(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ranked(record: SearchRecord) -> list[CandidateRow]:
    return sorted(record.candidates, key=lambda c: (-c.posterior, c.position))


def _short_list(record: SearchRecord) -> str:
    return ", ".join(f"{c.short} ({_posterior(c.posterior)})" for c in _ranked(record)[:SHORT_LIST])


def _verdict(record: SearchRecord) -> str:
    noun, best = _noun(record), record.best
    change = "broke" if record.direction == "broke" else "fixed"
    level = f"{record.confidence:g}"
    if record.status == "confident":
        return (
            f"The search stopped when the posterior of `{best.short}` reached the confidence "
            f"level {level}: it names `{best.short}` as the {noun} that {change} it, with "
            f"posterior {best.posterior:.3f} under the model."
        )
    candidates = f"The most probable {noun}s: {_short_list(record)}."
    if record.status == "budget spent":
        return (
            f"The search stopped on its budget ({record.tries:,} of {record.max_tries:,} tries) "
            f"before any {noun}'s posterior reached {level}, so it names no culprit. "
            f"{candidates}"
        )
    return (
        f"The search has not finished (status `{record.status}`: it is running, or its "
        f"process was stopped; `repro-lib bisect --resume {record.search_id}` continues it), "
        f"so it names no culprit yet. {candidates}"
    )


def _settings(record: SearchRecord) -> list[str]:
    noun = _noun(record)
    change = "broke" if record.direction == "broke" else "fixed"
    unbuildable = sum(c.build == "unbuildable" for c in record.candidates)
    where = f" of `{record.repo}`" if record.repo else ""
    skipped = f" ({unbuildable} unbuildable)" if unbuildable else ""
    return [
        f"- Range: good `{record.good}`, bad `{record.bad}`: "
        f"{len(record.candidates)} {noun}s{where}{skipped}.",
        f"- Looking for: the {noun} that {change} it (direction `{record.direction}`).",
        f"- Reset cycle: K = {record.tries_per_cycle} tries per fresh BuildKit state.",
        f"- Stops at: posterior ≥ {record.confidence:g}, or a budget of "
        f"{record.max_tries:,} tries; used {record.tries:,} tries over "
        f"{len(record.probes)} probes (status `{record.status}`).",
    ]


def _unbuildable(record: SearchRecord, unbuildable: list[CandidateRow]) -> str:
    named = ", ".join(
        f"`{c.short}`" + (f" (build log `{c.build_log}`)" if c.build_log else "")
        for c in unbuildable
    )
    text = f"Unbuildable (the build hook failed; skipped, never probed): {named}."
    top = {c.position for c in _ranked(record)[:SHORT_LIST]}
    if record.status != "confident" and any(c.position in top for c in unbuildable):
        text += (
            f" An unbuildable {_noun(record)} is among the most probable: with no tries "
            "there, the search cannot tell it from its neighbours (git bisect's "
            '"could be any of").'
        )
    return text


def _cell(value: object) -> str:
    """A Markdown table cell: ``|`` escaped and line breaks removed (subjects are free text)."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(headers: list[str], rows: list[list[object]], align: str) -> str:
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cycles(failing: int, cycles: int) -> str:
    return f"{failing}/{cycles}" if cycles else "–"


def _candidates_table(record: SearchRecord) -> str:
    noun = _noun(record)
    commits = record.kind == "commits"
    headers = ["#", noun.capitalize(), *(["Subject"] if commits else [])]
    headers += ["Posterior", "Failing cycles / cycles", "Tries", "Build"]
    rows = [
        [
            c.position + 1,
            f"`{c.short}`",
            *([c.subject] if commits else []),
            _posterior(c.posterior),
            _cycles(c.failing_cycles, c.cycles),
            f"{c.tries:,}",
            c.build,
        ]
        for c in _ranked(record)[:TOP_CANDIDATES]
    ]
    return _table(headers, rows, "rl" + ("l" if commits else "") + "rrrl")


def _probes_table(record: SearchRecord) -> str:
    short = {c.ref: c.short for c in record.candidates}
    rows = [
        [
            p.probe,
            f"`{short.get(p.ref, p.ref)}` (#{p.position + 1})",
            f"{p.tries:,}",
            _cycles(p.failing_cycles, p.cycles),
            f"`{p.sweep_id}`",
            f"`{short.get(p.best_ref, p.best_ref)}` ({_posterior(p.best_posterior)})",
        ]
        for p in sorted(record.probes, key=lambda p: p.probe)
    ]
    headers = ["Probe", "Candidate", "Tries", "Failing cycles / cycles", "Sweep"]
    return _table([*headers, "Best after it (posterior)"], rows, "rlrrll")


def plot_posterior(record: SearchRecord) -> Figure:
    """The posterior of each candidate being the culprit, in list order, as bars.

    The most probable candidate is highlighted (red once it is the named culprit,
    orange while it is only the best so far); unbuildable candidates are hatched
    grey; a dashed line marks the confidence level; each probed candidate carries
    its failing cycles / cycles above its bar and a triangle below the axis.
    """
    noun = _noun(record)
    title = f"Posterior of the culprit per {noun}: search {record.search_id}"
    candidates = sorted(record.candidates, key=lambda c: c.position)
    width = min(max(6.4, 0.28 * len(candidates) + 3.0), 24.0)
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if not candidates:
        ax.set_title(title)
        ax.text(0.5, 0.5, "no candidates", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    x = np.arange(len(candidates))
    posterior = np.array([c.posterior for c in candidates], dtype=float)
    unbuildable = np.array([c.build == "unbuildable" for c in candidates])
    probed = np.array([c.cycles > 0 for c in candidates])
    best = int(np.flatnonzero([c.position == record.best.position for c in candidates])[0])
    colours = matplotlib.colormaps["tab10"]
    plain, highlight = colours(0), colours(3) if record.status == "confident" else colours(1)
    facecolours = [highlight if i == best else plain for i in range(len(candidates))]
    bars = ax.bar(x, posterior, color=facecolours, width=0.8)
    for i in np.flatnonzero(unbuildable):
        bars[i].set_facecolor("lightgrey")
        bars[i].set_hatch("///")
        bars[i].set_edgecolor("0.4")
    rotate = 90 if len(candidates) > 12 else 0
    for i in np.flatnonzero(probed):
        c = candidates[i]
        ax.annotate(
            f"{c.failing_cycles}/{c.cycles}",
            (x[i], posterior[i]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            rotation=rotate,
            fontsize=7,
        )
    ax.plot(x[probed], np.full(int(probed.sum()), -0.04), "^", color="black", clip_on=False)
    ax.axhline(record.confidence, linestyle="--", color="grey", linewidth=1)
    ax.set_ylim(-0.06, 1.12)
    step = max(1, int(np.ceil(len(candidates) / 40)))
    ax.set_xticks(x[::step], [c.short for c in candidates][::step], rotation=90 if rotate else 0)
    ax.set_xlim(-0.6, len(candidates) - 0.4)
    ax.set_xlabel(f"{noun}s in list order (good {record.good}, bad {record.bad})")
    ax.set_ylabel(f"posterior: the first {noun} that {record.direction} it")
    # the statement is long (a commit subject): wrapped to the figure, not cut at its edges
    statement = textwrap.fill(record.statement(), width=int(width * 11))
    fig.suptitle(f"{title}\n{statement}", fontsize=10)
    named = "culprit" if record.status == "confident" else "most probable so far"
    handles = [
        Patch(facecolor=highlight, label=named),
        Patch(facecolor=plain, label="other candidates"),
        Line2D([], [], linestyle="--", color="grey", label=f"confidence {record.confidence:g}"),
        Line2D(
            [], [], marker="^", linestyle="", color="black", label="probed (failing/all cycles)"
        ),
    ]
    if unbuildable.any():
        handles.insert(
            2, Patch(facecolor="lightgrey", hatch="///", edgecolor="0.4", label="unbuildable")
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return fig
