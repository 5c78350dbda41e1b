"""Findings that fit a GitHub issue comment: ``comment.md`` and ``findings.zip``.

``write_github`` runs after ``report.write_report`` (``repro-lib report
--github``) and writes two files beside ``report.md``:

``comment.md``
    At most ``COMMENT_LIMIT`` (65,536) characters, GitHub's limit for one
    comment body, whatever the size of the sweep (counted as UTF-8 bytes, which
    are never fewer than characters). First the verdict per version and a short
    table, then the rate per version and the rate against the reset frequency
    as Mermaid ``xychart-beta`` charts (GitHub renders Mermaid in comments;
    ``xychart-beta`` needs Mermaid 10.5 or newer and has no error bars and no
    legend, so the interval is drawn as two lines and a caption says which is
    which). Then, each inside ``<details>``: the table per cell, the rest of the
    report, and the command that reproduces the data with the environment. A
    block that does not fit is cut at a line, and a line says how much was left
    out and where the whole of it is.
``findings.zip``
    ``report.md``, its PNG figures, the trials file and up to ``evidence``
    failure evidence bundles, below ``ATTACHMENT_LIMIT`` (GitHub's 25 MB for an
    attached file): whatever does not fit is left out and ``CUT.txt`` in the
    archive (and a line in the comment) names it.

Post with ``gh issue comment N --repo OWNER/REPO --body-file comment.md``,
then drag ``findings.zip`` into the comment to attach it (GitHub has no API
for attachments).
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .culprit import SearchRecord
from .forensics import find_run_dir
from .report_culprit import summary_line
from .results import version_key
from .stats import failure_rate, format_pct, rates_by

COMMENT_LIMIT = 65_536
"""GitHub's limit on the body of one issue comment, in characters."""
ATTACHMENT_LIMIT = 25_000_000
"""GitHub's limit on one attached file (25 MB)."""
ALPHA = 0.05
MAX_RATE = 0.01
_SHORT_ROWS = 20  # versions in the short table and the bar chart
_CURVES = 4  # rate-vs-reset charts (the versions that failed most)
_MARGIN = 256  # bytes kept free below the limit
_OWN_SECTIONS = ("environment", "how to reproduce", "results per cell", "verdict", "figures")


@dataclass(frozen=True)
class GithubFiles:
    """What ``write_github`` wrote."""

    comment: Path
    archive: Path
    left_out: tuple[str, ...]  # archive entries that did not fit


def write_github(
    out_dir: str | Path,
    df: pd.DataFrame,
    *,
    scope: str,
    trials_file: Path | None = None,
    runs_dir: Path | None = None,
    evidence: int = 3,
    limit: int = COMMENT_LIMIT,
    attachment_limit: int = ATTACHMENT_LIMIT,
    searches: Sequence[SearchRecord] = (),
) -> GithubFiles:
    """Write ``comment.md`` and ``findings.zip`` beside ``report.md`` in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        The report's directory (``report.md`` must be there).
    df : DataFrame
        The trials the report was written from (``load_results`` columns).
    scope : str
        What the report covers, e.g. ``sweep `s1```.
    trials_file : Path, optional
        The raw rows written beside the report (``trials.csv`` or ``.parquet``).
    runs_dir : Path, optional
        Where the runs' directories are, to find failure evidence bundles.
    evidence : int, default 3
        The most evidence bundles to put in the archive.
    limit, attachment_limit : int
        Size limits of the comment (characters, counted as UTF-8 bytes) and of
        the archive (bytes).
    searches : sequence of SearchRecord, optional
        Culprit searches the report shows: one line each under the heading.
    """
    out = Path(out_dir)
    report = (out / "report.md").read_text(encoding="utf-8")
    archive, left_out = write_archive(
        out,
        trials_file=trials_file,
        bundles=_bundles(df, runs_dir, evidence),
        limit=attachment_limit,
    )
    text = comment_text(df, report, scope=scope, left_out=left_out, limit=limit, searches=searches)
    comment = out / "comment.md"
    comment.write_text(text, encoding="utf-8")
    return GithubFiles(comment, archive, tuple(left_out))


# the comment ----------------------------------------------------------------------
def comment_text(
    df: pd.DataFrame,
    report: str,
    *,
    scope: str,
    left_out: Sequence[str] = (),
    limit: int = COMMENT_LIMIT,
    searches: Sequence[SearchRecord] = (),
) -> str:
    """The comment body: headline first, then ``<details>`` blocks cut to fit ``limit``."""
    sections = _sections(report)
    head = _headline(df, scope, left_out, searches)
    blocks = [
        ("Results per cell", _cells_table(df), "per-cell table"),
        ("The rest of the report", _rest(sections), "report"),
        ("How to reproduce, and the environment", _reproduce(sections), "section"),
    ]
    blocks = [b for b in blocks if b[1].strip()]
    budget = limit - _MARGIN - _size(head)
    if budget < 0:  # only with an absurd limit: the headline itself is cut
        return _cut(head, limit - _MARGIN, "headline")
    wrapped = [_details(title, body) for title, body, _ in blocks]
    shares = _fair_shares([_size(w) for w in wrapped], budget)
    parts = [head]
    for (title, body, what), share, whole in zip(blocks, shares, wrapped, strict=True):
        if _size(whole) <= share:
            parts.append(whole)
            continue
        room = share - _size(_details(title, ""))
        if room > 400:
            parts.append(_details(title, _cut(body, room, what)))
        else:
            parts.append(
                f"_{title}: left out to fit GitHub's limit; see `report.md` in `findings.zip`._\n"
            )
    return "\n".join(parts).rstrip("\n") + "\n"


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _fair_shares(sizes: Sequence[int], budget: int) -> list[int]:
    """Water-filling: each block gets its size or an equal share of what is left."""
    shares = [0] * len(sizes)
    left, todo = budget, sorted(range(len(sizes)), key=lambda i: sizes[i])
    while todo:
        each = left // len(todo)
        i = todo.pop(0)
        shares[i] = min(sizes[i], each)
        left -= shares[i]
    return shares


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body.strip()}\n\n</details>\n"


def _cut(text: str, room: int, what: str) -> str:
    """``text`` cut at a whole line to fit ``room`` bytes, with a line saying so.

    An open code fence is closed; the note is a paragraph of its own, after a blank
    line, so that it never joins a table.
    """
    lines = text.rstrip("\n").split("\n")
    total = len(lines)

    def note(kept: int) -> str:
        return (
            f"\n\n_Cut to fit GitHub's {COMMENT_LIMIT:,}-character comment limit: {kept:,} of "
            f"{total:,} lines of the {what} shown. The whole {what} is in `report.md`, in "
            "`findings.zip` and in the report's directory._"
        )

    reserve = _size(note(total)) + len("\n```")  # the longest note, and a closing fence
    kept, used, fence = [], 0, False
    for line in lines:
        cost = _size(line) + 1
        if used + cost + reserve > room:
            break
        kept.append(line)
        used += cost
        if line.lstrip().startswith("```"):
            fence = not fence
    return "\n".join(kept) + ("\n```" if fence else "") + note(len(kept))


def _sections(report: str) -> list[tuple[str, str]]:
    """``report.md`` as ``(heading, text)`` pairs at level 2 (the first is the preamble)."""
    out: list[tuple[str, str]] = []
    heading, lines = "", []
    for line in report.split("\n"):
        if line.startswith("## "):
            out.append((heading, "\n".join(lines)))
            heading, lines = line[3:].strip(), []
        else:
            lines.append(line)
    out.append((heading, "\n".join(lines)))
    return out


def _own(heading: str) -> bool:
    return any(heading.lower().startswith(name) for name in _OWN_SECTIONS)


def _rest(sections: list[tuple[str, str]]) -> str:
    """The report's sections the comment does not show otherwise (figures are in the archive)."""
    parts = [
        f"### {heading}\n{_demoted(_no_images(text))}"
        for heading, text in sections[1:]
        if not _own(heading) and text.strip()
    ]
    return "\n".join(parts)


def _demoted(text: str) -> str:
    """Headings one level down (``##`` sections become ``###``, so theirs go to ``####``);
    lines in code blocks (shell comments) are left alone."""
    out, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
        out.append("#" + line if not fence and re.match(r"#{1,5} ", line) else line)
    return "\n".join(out)


def _reproduce(sections: list[tuple[str, str]]) -> str:
    order = {"how to reproduce": 0, "environment": 1}
    picked = sorted(
        (s for s in sections[1:] if s[0].lower() in order), key=lambda s: order[s[0].lower()]
    )
    return "\n".join(f"### {heading}\n{text.strip()}\n" for heading, text in picked)


def _no_images(text: str) -> str:
    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r"_(figure `\2` in findings.zip: \1)_", text)


def _headline(
    df: pd.DataFrame, scope: str, left_out: Sequence[str], searches: Sequence[SearchRecord]
) -> str:
    lines = [f"## BuildKit missing-layer reproduction: {scope}", ""]
    if searches:  # what a culprit search found comes first: it answers the question
        lines += [
            *(f"- **Culprit search `{s.search_id}`**: {summary_line(s)}" for s in searches),
            "",
        ]
    if df.empty:
        return "\n".join([*lines, "No trials were recorded, so there is nothing to report.", ""])
    counted = int(df["counted"].sum())
    cells = df["cell"].nunique()
    first, last = df["started_at"].min(), df["started_at"].max()
    lines.append(
        f"{len(df):,} tries ({counted:,} counted: builds that finished) in {cells:,} cells, "
        f"recorded {pd.Timestamp(first):%Y-%m-%d} to {pd.Timestamp(last):%Y-%m-%d}. "
        "Build and infra errors are not evidence either way."
    )
    versions = rates_by(df, "version_label", alpha=ALPHA, max_rate=MAX_RATE)
    versions = versions.sort_values("version_label", key=lambda s: s.map(version_key))
    lines += ["", "### Verdict per version", ""]
    for r in versions.head(_SHORT_ROWS).itertuples(index=False):
        head = str(r.verdict).split(" (")[0]
        lines.append(
            f"- **{_label(r.version_label)}**: {head} — "
            f"{failure_rate(r.failures, r.tries, alpha=ALPHA).describe()}"
        )
    if len(versions) > _SHORT_ROWS:
        lines.append(f"- … {len(versions) - _SHORT_ROWS} more versions in the table per cell below")
    conf = f"{100 * (1 - ALPHA):g}%"
    lines += [
        "",
        f"| Version | Tries | Failures | Rate | {conf} interval |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in versions.head(_SHORT_ROWS).itertuples(index=False):
        interval = f"{format_pct(r.ci_low)}–{format_pct(r.ci_high)}" if r.tries else "–"
        rate = format_pct(r.rate) if r.tries else "–"
        lines.append(
            f"| `{r.version_label}` | {r.tries:,} | {r.failures:,} | {rate} | {interval} |"
        )
    lines += ["", *_charts(df, versions)]
    lines.append(
        "Figures (PNG), the report, the trials and failure evidence are in `findings.zip`: "
        "drag it into this comment to attach it."
    )
    if left_out:
        lines.append(
            f"Left out of `findings.zip` to stay under GitHub's 25 MB: {', '.join(f'`{n}`' for n in left_out)} "
            "(see `CUT.txt` in it)."
        )
    lines.append("")
    return "\n".join(lines)


def _label(version_label: str) -> str:
    label = str(version_label)
    if "<-" in label:
        importer, exporter = label.split("<-", 1)
        return f"{importer} importing a cache exported by {exporter}"
    return label


# Mermaid ----------------------------------------------------------------------------
def _charts(df: pd.DataFrame, versions: pd.DataFrame) -> list[str]:
    """The per-version bar chart and the rate-vs-reset charts of the versions that failed."""
    out: list[str] = []
    shown = versions[versions["tries"] > 0].head(_SHORT_ROWS)
    if len(shown):
        out += [
            "### Rate per version",
            "",
            xychart(
                "Missing-layer rate per try (%) by version",
                [_category(v) for v in shown["version_label"]],
                [("bar", [100 * v for v in shown["rate"]])],
                y_label="rate (%)",
                y_max=100 * float(shown["ci_high"].max()),
                horizontal=True,
            ),
            "",
        ]
    counted = df[df["counted"]]
    failing = (
        counted[counted["failed"]]
        .groupby("version_label", observed=True)
        .size()
        .sort_values(ascending=False)
    )
    curves = []
    for version in failing.index:
        d = counted[counted["version_label"] == version]
        per_k = rates_by(d, "reset_freq", alpha=ALPHA)
        per_k = per_k[per_k["tries"] > 0].sort_values("reset_freq")
        if len(per_k) >= 2:
            curves.append((str(version), per_k))
        if len(curves) == _CURVES:
            break
    if curves:
        out += ["### Rate against the reset frequency K", ""]
        for version, per_k in curves:
            out += [
                xychart(
                    f"{_category(version)}: rate per try (%) by reset frequency K",
                    [str(int(k)) for k in per_k["reset_freq"]],
                    [
                        ("bar", [100 * v for v in per_k["rate"]]),
                        ("line", [100 * v for v in per_k["ci_low"]]),
                        ("line", [100 * v for v in per_k["ci_high"]]),
                    ],
                    y_label="rate (%)",
                    y_max=100 * float(per_k["ci_high"].max()),
                    x_label="K (tries between resets)",
                ),
                "",
            ]
        conf = f"{100 * (1 - ALPHA):g}%"
        out += [f"Bars: the observed rate; lines: its {conf} Wilson interval.", ""]
        if len(failing) > len(curves):
            out += ["Other versions that failed: see the table per cell.", ""]
    return out


def _category(label: str) -> str:
    """A version label as a chart category (no quotes, brackets or angle brackets)."""
    text = str(label)
    if "<-" in text:
        importer, exporter = text.split("<-", 1)
        text = f"{importer} (cache {exporter})"
    return re.sub(r'["\[\]<>;#]', "", text)


def xychart(
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    y_label: str,
    y_max: float,
    x_label: str | None = None,
    horizontal: bool = False,
) -> str:
    """A fenced Mermaid ``xychart-beta`` block: categories on x, ``bar``/``line`` series
    (``horizontal``: categories down the side, where long labels stay readable)."""
    top = _nice_ceiling(y_max)
    x_axis = ", ".join(f'"{c}"' for c in categories)
    x_title = f'"{_plain(x_label)}" ' if x_label else ""
    lines = [
        "```mermaid",
        "xychart-beta horizontal" if horizontal else "xychart-beta",
        f'    title "{_plain(title)}"',
        f"    x-axis {x_title}[{x_axis}]",
        f'    y-axis "{_plain(y_label)}" 0 --> {top:g}',
    ]
    for kind, values in series:
        lines.append(f"    {kind} [{', '.join(_number(v) for v in values)}]")
    lines.append("```")
    return "\n".join(lines)


def _plain(text: str) -> str:
    return re.sub(r'["\[\]<>;#]', "", text)


def _number(value: float) -> str:
    # Mermaid's parser takes plain decimals only: 9.19e-10 is a parse error
    if not math.isfinite(value):
        return "0"
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at most 100)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return min(100.0, float(step * power))
    return 100.0


def _cells_table(df: pd.DataFrame) -> str:
    """Every cell's counts, rate and interval (as in the report), largest first."""
    if df.empty:
        return ""
    cells = rates_by(df, "cell", alpha=ALPHA)
    conf = f"{100 * (1 - ALPHA):g}%"
    lines = [
        f"| Cell | Tries | Failures | Build errors | Infra errors | Rate | {conf} interval |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cells.itertuples(index=False):
        interval = f"{format_pct(r.ci_low)}–{format_pct(r.ci_high)}" if r.tries else "–"
        rate = format_pct(r.rate) if r.tries else "–"
        lines.append(
            f"| `{r.cell}` | {r.tries:,} | {r.failures:,} | {r.build_errors:,} | "
            f"{r.infra_errors:,} | {rate} | {interval} |"
        )
    return "\n".join(lines)


# the archive ---------------------------------------------------------------------
def _bundles(df: pd.DataFrame, runs_dir: Path | None, most: int) -> list[tuple[str, Path]]:
    """Up to ``most`` failure evidence bundles on this machine, one per run, oldest first."""
    if runs_dir is None or most <= 0 or df.empty or "evidence_path" not in df.columns:
        return []
    failed = df[df["failed"] & df["evidence_path"].fillna("").astype(str).ne("")]
    out: list[tuple[str, Path]] = []
    for row in failed.drop_duplicates("run_id").itertuples(index=False):
        run_dir = find_run_dir(runs_dir, row.run_id)
        bundle = run_dir / row.evidence_path if run_dir else None
        if bundle is not None and bundle.is_dir():
            out.append((f"evidence/{row.run_id}/trial-{int(row.trial)}", bundle))
        if len(out) == most:
            break
    return out


def write_archive(
    out: Path,
    *,
    trials_file: Path | None,
    bundles: Sequence[tuple[str, Path]] = (),
    limit: int = ATTACHMENT_LIMIT,
) -> tuple[Path, list[str]]:
    """``findings.zip``: report, figures, trials file, bundles, in that order, below ``limit``.

    Each file's compressed size is measured before it goes in, so a file that
    would cross the limit is left out (and named in ``CUT.txt``) while smaller
    ones after it still go in. Returns the archive and what was left out.
    """
    files: list[tuple[str, Path]] = [("report.md", out / "report.md")]
    files += [(p.name, p) for p in sorted(out.glob("*.png"))]
    if trials_file is not None and trials_file.is_file():
        files.append((trials_file.name, trials_file))
    for prefix, bundle in bundles:
        files += [
            (f"{prefix}/{p.relative_to(bundle).as_posix()}", p)
            for p in sorted(bundle.rglob("*"))
            if p.is_file()
        ]
    room = limit - 4096  # the central directory, CUT.txt and slack
    taken: list[tuple[str, Path]] = []
    left_out: list[str] = []
    used = 0
    for name, path in files:
        cost = _compressed_size(path) + 2 * len(name.encode()) + 128  # headers, directory entry
        if used + cost <= room:
            taken.append((name, path))
            used += cost
        else:
            left_out.append(name)
    archive = out / "findings.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in taken:
            zf.write(path, name)
        if left_out:
            zf.writestr(
                "CUT.txt",
                f"Left out to keep this archive under {limit:,} bytes (GitHub's attachment "
                "limit); they are in the report's directory:\n"
                + "".join(f"{name}\n" for name in left_out),
            )
    return archive, _summarise(left_out)


def _summarise(names: list[str]) -> list[str]:
    """Left-out entries, a bundle's files named once by their bundle."""
    out: list[str] = []
    for name in names:
        parts = name.split("/")
        short = "/".join(parts[:3]) if parts[0] == "evidence" else name
        if short not in out:
            out.append(short)
    return out


def _compressed_size(path: Path) -> int:
    """The deflated size of a file, as ``zipfile`` will store it (default level)."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            size += len(packer.compress(chunk))
    return size + len(packer.flush())
