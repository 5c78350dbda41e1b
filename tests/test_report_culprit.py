"""The report's Culprit section, from SearchRecords built here (no Docker, no search run).

The records are test data for the rendering: the posteriors come from
``culprit.transition_posterior`` on the counts given, as a search would store them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from repro_lib.comment import comment_text  # noqa: E402
from repro_lib.culprit import (  # noqa: E402
    CandidateRow,
    ProbeRow,
    SearchRecord,
    transition_posterior,
)
from repro_lib.report import write_report  # noqa: E402
from repro_lib.report_culprit import (  # noqa: E402
    figure_name,
    plot_posterior,
    select_searches,
    summary_line,
)
from repro_lib.results import load_results  # noqa: E402
from repro_lib.store import Store  # noqa: E402

from .factories import make_record

K = 4


def search(
    probes: list[tuple[int, int, int]],
    *,
    n: int = 10,
    status: str = "confident",
    direction: str = "broke",
    unbuildable: tuple[int, ...] = (),
    subject=lambda i: f"commit {i}",
    search_id: str = "c-test",
    sweep_prefix: str = "s-probe",
) -> SearchRecord:
    """A commit search over ``n`` candidates with ``probes`` of (position, cycles, failing)."""
    cycles, failing = np.zeros(n, int), np.zeros(n, int)
    rows = []
    for number, (position, c, f) in enumerate(probes, start=1):
        cycles[position] += c
        failing[position] += f
        after = transition_posterior(cycles, failing, direction)
        best = int(np.argmax(after))
        rows.append(
            ProbeRow(
                number,
                position,
                f"{position:02d}" * 20,
                f"{sweep_prefix}{number}",
                c,
                f,
                c * K,
                f"{best:02d}" * 20,
                float(after[best]),
            )
        )
    posterior = transition_posterior(cycles, failing, direction)
    candidates = tuple(
        CandidateRow(
            position=i,
            ref=f"{i:02d}" * 20,
            short=f"{i:02d}" * 4,
            subject=subject(i),
            build="unbuildable" if i in unbuildable else "built",
            image=None if i in unbuildable else f"repro-lib-bisect/buildkit:{i:02d}",
            build_log=f"/data/builds/{i:02d}.log" if i in unbuildable else None,
            cycles=int(cycles[i]),
            failing_cycles=int(failing[i]),
            tries=int(cycles[i]) * K,
            posterior=float(posterior[i]),
        )
        for i in range(n)
    )
    return SearchRecord(
        search_id=search_id,
        kind="commits",
        repo="/src/buildkit",
        good="v0.9.0",
        bad="v0.9.1",
        direction=direction,
        confidence=0.95,
        max_tries=2000,
        tries_per_cycle=K,
        status=status,
        candidates=candidates,
        probes=tuple(rows),
    )


#: commit 6 broke it: clean cycles up to 5, failing cycles from 6 on
CONFIDENT = [(3, 30, 0), (8, 30, 12), (5, 40, 0), (6, 30, 11)]
#: too few cycles to decide between 5 and 6
SHORT = [(3, 10, 0), (8, 10, 4), (6, 5, 1)]


def report_of(tmp_path, searches, **kwargs):
    Store(tmp_path / "s.sqlite").close()
    out = tmp_path / "out"
    text = write_report(tmp_path / "s.sqlite", out, searches=searches, **kwargs).read_text()
    return text, out


def table_rows(text: str, header: str) -> list[str]:
    """The lines of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def columns(row: str) -> int:
    """Cells of a Markdown table row, counting only unescaped pipes."""
    return len([m for m in row.replace("\\|", "") if m == "|"]) - 1


def test_a_confident_search_names_its_culprit_with_its_statement(tmp_path):
    record = search(CONFIDENT)
    assert record.best.position == 6 and record.best.posterior >= 0.95
    text, out = report_of(tmp_path, [record])
    assert "## Culprit" in text and "### Search `c-test`" in text
    assert record.statement() in text and record.statement().startswith("culprit: 06060606")
    assert "names `06060606` as the commit that broke it" in text
    assert "names no culprit" not in text
    # the settings: range, direction, confidence, K and budget
    assert "good `v0.9.0`, bad `v0.9.1`: 10 commits of `/src/buildkit`" in text
    assert "direction `broke`" in text and "K = 4 tries" in text
    assert "posterior ≥ 0.95, or a budget of 2,000 tries; used 520 tries over 4 probes" in text
    # best candidates first, and every probe with its sweep and the best after it
    best = table_rows(text, "| # | Commit | Subject")
    assert best[2].startswith("| 7 | `06060606` | commit 6 |")
    probes = table_rows(text, "| Probe |")
    assert len(probes) == 2 + 4
    assert probes[5].startswith("| 4 | `06060606` (#7) | 120 | 11/30 | `s-probe4` | `06060606` (")


def test_a_search_stopped_on_its_budget_names_no_culprit(tmp_path):
    record = search(SHORT, status="budget spent")
    assert record.best.posterior < 0.95
    text, _ = report_of(tmp_path, [record])
    assert "stopped on its budget (100 of 2,000 tries)" in text
    assert "names no culprit" in text and "The most probable commits: " in text
    assert "best candidate so far: " in text
    assert not any(line.startswith("culprit:") for line in text.splitlines())
    assert "as the commit that broke it" not in text


def test_an_unfinished_search_says_how_to_continue_it(tmp_path):
    text, _ = report_of(tmp_path, [search(SHORT, status="running")])
    assert "names no culprit yet" in text
    assert "`repro-lib bisect --resume c-test` continues it" in text


def test_a_fix_search_says_fixed(tmp_path):
    fixed = [(3, 30, 12), (8, 30, 0), (5, 40, 11), (6, 30, 0)]
    text, _ = report_of(tmp_path, [search(fixed, direction="fixed")])
    assert "as the commit that fixed it" in text and "direction `fixed`" in text


def test_table_cells_escape_pipes_in_subjects(tmp_path):
    record = search(CONFIDENT, subject=lambda i: f"cache: a|b {i}\nsecond line")
    text, _ = report_of(tmp_path, [record])
    rows = table_rows(text, "| # | Commit | Subject")
    assert "cache: a\\|b 6 second line" in rows[2]
    assert {columns(row) for row in rows} == {7}


def test_unbuildable_candidates_are_shown_in_words_table_and_plot(tmp_path):
    record = search(SHORT, status="budget spent", unbuildable=(5,))
    text, _ = report_of(tmp_path, [record])
    assert "(1 unbuildable)" in text
    assert "Unbuildable (the build hook failed; skipped, never probed): `05050505`" in text
    assert "build log `/data/builds/05.log`" in text
    assert "cannot tell it from its neighbours" in text  # 05 is among the most probable
    unbuildable = [r for r in table_rows(text, "| # | Commit") if r.endswith("| unbuildable |")]
    assert len(unbuildable) == 1 and "`05050505`" in unbuildable[0]
    ax = plot_posterior(record).axes[0]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert [round(p.get_x() + p.get_width() / 2) for p in hatched] == [5]
    assert "unbuildable" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_plot_marks_confidence_and_probes_and_is_written_as_png(tmp_path):
    record = search(CONFIDENT)
    text, out = report_of(tmp_path, [record])
    png = out / figure_name(record)
    assert f"]({png.name})" in text
    assert png.stat().st_size > 10_000
    assert imread(png).shape[0] > 100
    ax = plot_posterior(record).axes[0]
    assert any(list(line.get_ydata()) == [0.95, 0.95] for line in ax.get_lines())
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(["0/30", "12/30", "0/40", "11/30"])
    heights = [p.get_height() for p in ax.patches if not p.get_hatch()]
    assert heights == pytest.approx([c.posterior for c in record.candidates])


def test_no_search_no_section_and_no_figure(tmp_path):
    text, out = report_of(tmp_path, [])
    assert "Culprit" not in text
    assert not list(out.glob("culprit-*.png"))


def test_a_search_beside_trials_keeps_the_rest_of_the_report(tmp_path):
    path = tmp_path / "t.sqlite"
    with Store(path) as st:
        st.start_run("s-probe1-c000", {"tries": 4}, sweep_id="s-probe1")
        for trial in range(1, 5):
            st.append(
                make_record(trial, "ok", run_id="s-probe1-c000", sweep_id="s-probe1", reset_freq=4)
            )
        st.finish_run("s-probe1-c000", "done")
    record = search(CONFIDENT)
    text = write_report(path, tmp_path / "out", searches=[record]).read_text()
    assert "## Results per cell" in text and "## Culprit" in text
    assert len(load_results(path)) == 4


def test_report_sweep_selects_the_searches_it_covers():
    one = search(CONFIDENT, search_id="c-one", sweep_prefix="s-one-")
    two = search(SHORT, search_id="c-two", sweep_prefix="s-two-")
    both = [one, two]
    assert select_searches(both) == both
    assert select_searches(both, sweep="s-two-2") == [two]  # a probe's sweep
    assert select_searches(both, sweep="c-one") == [one]  # the search's own id
    assert select_searches(both, sweep="s-other") == []
    assert select_searches(both, run="s-one-3-c000") == [one]
    assert select_searches(both, run="s-one-33-c000") == []


def test_the_github_comment_has_a_line_per_search(tmp_path):
    record = search(SHORT, status="budget spent")
    line = summary_line(record)
    assert line.startswith(record.statement())
    assert "commits by posterior: " in line and line.count("(0.") + line.count("(<") >= 3
    text, out = report_of(tmp_path, [record], github=True)
    comment = (out / "comment.md").read_text()
    assert f"- **Culprit search `c-test`**: {line}" in comment
    df = load_results(tmp_path / "s.sqlite")
    assert "Culprit search" not in comment_text(df, text, scope="all")


def test_report_on_a_search_id_covers_its_probes_trials(tmp_path):
    # `report --sweep <search id>`: no sweep has that id, its probes' sweeps hold the trials
    from tests.conftest import run_cli
    from tests.test_report import cycles, fill

    record = search(SHORT, search_id="c-cli", sweep_prefix="c-cli-p")
    store_path = tmp_path / "trials.sqlite"
    with Store(store_path) as st:
        st.save_search(record)
        for probe in record.probes:
            fill(st, f"{probe.sweep_id}-c000", cycles("v", 2, 2), sweep_id=probe.sweep_id)
        fill(st, "elsewhere-c000", cycles("v", 2, 5), sweep_id="elsewhere")
    out = tmp_path / "report"
    proc = run_cli(
        "report", "--store", str(store_path), "--sweep", "c-cli", "--out", str(out), home=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "Report on culprit search `c-cli` (3 probe sweeps)" in text
    assert "## No trials" not in text and "## Culprit" in text
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 3 * 4  # not "elsewhere"
