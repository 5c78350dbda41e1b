"""``repro-lib report --github``: comment.md fits one GitHub comment, findings.zip one attachment.

The 500-cell store is synthetic (written through ``TrialRecord.to_row``): test
data for the comment writer, not BuildKit evidence. The Mermaid blocks are
rendered with the ``mermaid`` npm package in headless Chromium when both are
here (README: "Checking the Mermaid charts"); otherwise that test skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from repro_lib.comment import COMMENT_LIMIT, comment_text, write_archive
from repro_lib.records import TRIAL_COLUMNS
from repro_lib.report import write_report
from repro_lib.results import load_results
from repro_lib.store import Store

from .factories import make_record

ROOT = Path(__file__).resolve().parent.parent
MERMAID_JS = Path(
    os.environ.get(
        "REPRO_LIB_MERMAID_JS", ROOT / "build/mermaid/node_modules/mermaid/dist/mermaid.min.js"
    )
)


def _store_of_cells(path: Path, versions: int = 20, resets: int = 25, tries: int = 4) -> Path:
    """``versions x resets`` cells (500 by default), ``tries`` each, some failing (test data)."""
    rng = np.random.default_rng(7)
    rows = []
    for v in range(versions):
        version = f"v0.{v}.0"
        for k in range(1, resets + 1):
            run = f"run-v{v}-k{k}"
            for t in range(1, tries + 1):
                failed = v % 3 == 0 and rng.random() < 0.3
                rows.append(
                    make_record(
                        t,
                        "missing_layer" if failed else "ok",
                        version=version,
                        run_id=run,
                        sweep_id="big",
                        reset_freq=k,
                        since_reset=(t - 1) % k + 1,
                        reset_index=(t - 1) // k,
                        started_at=f"2024-05-01T10:{v:02d}:{k:02d}.{t:03d}+00:00",
                        cell=f"backend=container/version={version}/cache=registry/reset={k}/mode=daemonless",
                        lost_steps=["COPY repro.txt /"] if failed else [],
                    ).to_row()
                )
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.executemany(
            f"INSERT INTO trials ({', '.join(TRIAL_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in TRIAL_COLUMNS)})",
            [[r[c] for c in TRIAL_COLUMNS] for r in rows],
        )
    return path


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = _store_of_cells(home / "big.sqlite")
    out = home / "report"
    old = os.environ.get("REPRO_LIB_HOME")
    os.environ["REPRO_LIB_HOME"] = str(home)
    try:
        write_report(store, out, github=True)
    finally:
        if old is None:
            os.environ.pop("REPRO_LIB_HOME")
        else:
            os.environ["REPRO_LIB_HOME"] = old
    return store, out


def mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)


def test_a_500_cell_comment_fits_one_github_comment(big_report):
    store, out = big_report
    text = (out / "comment.md").read_text(encoding="utf-8")
    assert len(load_results(store)["cell"].unique()) == 500
    assert len(text.encode("utf-8")) <= COMMENT_LIMIT  # GitHub counts characters; bytes >= chars
    # the headline first, then the collapsed rest
    assert (
        text.index("### Verdict per version") < text.index("| Version |") < text.index("<details>")
    )
    assert text.count("<details>") == text.count("</details>") >= 2
    assert text.count("```") % 2 == 0
    # the table per cell did not fit: it is cut, and says where all of it is
    cells = text[text.index("<summary>Results per cell</summary>") :]
    cells = cells[: cells.index("</details>")]
    assert "Cut to fit GitHub's 65,536-character comment limit" in cells
    assert "`report.md`" in cells and "`findings.zip`" in cells
    assert cells.count("| `backend=") < 500
    # the reproduction command and environment, collapsed
    assert "<summary>How to reproduce, and the environment</summary>" in text
    assert len(mermaid_blocks(text)) >= 2 and "xychart-beta" in text
    with zipfile.ZipFile(out / "findings.zip") as zf:
        names = zf.namelist()
    assert "report.md" in names and "trials.csv" in names and "durations.png" in names


def test_every_limit_is_kept_and_a_cut_is_said(big_report):
    _, out = big_report
    df = load_results(_store_of_cells(out.parent / "again.sqlite", versions=4, resets=10))
    report = (out / "report.md").read_text(encoding="utf-8")
    for limit in (65_536, 20_000, 8_000):
        text = comment_text(df, report, scope="sweep `big`", limit=limit)
        assert len(text.encode("utf-8")) <= limit
        assert text.count("<details>") == text.count("</details>")
        assert text.count("```") % 2 == 0
    assert "Cut to fit" in comment_text(df, report, scope="x", limit=20_000)


def test_findings_zip_stays_under_the_attachment_limit(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# report\n" * 200)
    (out / "rate_vs_reset.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    trials = out / "trials.parquet"
    trials.write_bytes(np.random.default_rng(1).bytes(300_000))  # does not compress
    bundle = tmp_path / "runs" / "r1" / "evidence" / "trial-0002"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text('{"layers": []}\n' * 50)
    limit = 100_000
    archive, left_out = write_archive(
        out, trials_file=trials, bundles=[("evidence/r1/trial-2", bundle)], limit=limit
    )
    assert archive.stat().st_size <= limit
    assert left_out == ["trials.parquet"]
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        cut = zf.read("CUT.txt").decode()
    # what fits after the file that did not still goes in
    assert "evidence/r1/trial-2/manifest.json" in names and "report.md" in names
    assert "trials.parquet" in cut and "trials.parquet" not in names
    assert write_archive(out, trials_file=trials, limit=10**7)[1] == []


def _render_in_chromium(blocks: list[str], work: Path) -> list[dict]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Chromium (apt-get install chromium) to render the Mermaid charts")
    if not MERMAID_JS.is_file():
        pytest.skip(
            f"needs the mermaid npm package at {MERMAID_JS} "
            "(npm install --prefix build/mermaid mermaid@10.9.6)"
        )
    page = work / "page.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'></head><body>"
        "<pre id='out'>pending</pre>"
        f"<script src='{MERMAID_JS.resolve().as_uri()}'></script><script>"
        f"const blocks = {json.dumps(blocks)};"
        "mermaid.initialize({startOnLoad: false});"
        "(async () => { const results = [];"
        " for (let i = 0; i < blocks.length; i++) {"
        "  try { const r = await mermaid.render('m' + i, blocks[i]);"
        "        results.push({ok: true, svg: r.svg}); }"
        "  catch (e) { results.push({ok: false, error: String((e && e.message) || e)}); } }"
        " document.getElementById('out').textContent = JSON.stringify(results); })();"
        "</script></body></html>",
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={work / 'profile'}",
            "--allow-file-access-from-files",
            "--virtual-time-budget=30000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r"<pre id=\"out\">(.*?)</pre>", done.stdout, flags=re.S)
    assert found, f"Chromium gave no result: {done.stderr[-1500:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


def test_mermaid_blocks_render_in_a_browser(big_report, tmp_path):
    _, out = big_report
    blocks = mermaid_blocks((out / "comment.md").read_text(encoding="utf-8"))
    findings = tmp_path / "findings"
    write_report(ROOT / "data/raw/findings/trials.sqlite", findings, github=True)
    blocks += mermaid_blocks((findings / "comment.md").read_text(encoding="utf-8"))
    broken = "xychart-beta\n    x-axis [a, b\n    bar [1]\n"  # the harness must see a failure
    results = _render_in_chromium([*blocks, broken], tmp_path)
    assert len(results) == len(blocks) + 1
    assert not results[-1]["ok"]
    for block, result in zip(blocks, results, strict=False):
        assert result["ok"], f"{result.get('error')}\n{block}"
        assert "<svg" in result["svg"] and "Syntax error" not in result["svg"]
        bars = block.count("bar [")
        assert result["svg"].count("<rect") >= bars  # the bars were drawn


def test_report_cli_github_writes_both_files(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from repro_lib.cli import main

    monkeypatch.setenv("REPRO_LIB_HOME", str(tmp_path))
    out = tmp_path / "out"
    sample = ROOT / "data/raw/sample/trials.sqlite"
    result = CliRunner().invoke(
        main, ["report", "--store", str(sample), "--out", str(out), "--github", "--evidence", "0"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        str(out / n) for n in ("report.md", "comment.md", "findings.zip")
    ]
    assert "### Verdict per version" in (out / "comment.md").read_text(encoding="utf-8")


def test_chart_numbers_are_plain_decimals_mermaid_can_parse():
    # a cluster-robust lower bound can be 9.19e-10; Mermaid rejects exponents
    from repro_lib.comment import _number

    assert [_number(v) for v in (9.19e-10, 0.00698, 4.56, 15.0, 100.0)] == [
        "0",
        "0.007",
        "4.56",
        "15",
        "100",
    ]
