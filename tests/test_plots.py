"""Figures are checked for content (labels, lines, texts), not pixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from repro_lib.plots import (  # noqa: E402
    plot_cumulative_detection,
    plot_durations,
    plot_heatmap,
    plot_rate_by_position,
    plot_rate_vs_reset,
)
from repro_lib.results import derive  # noqa: E402

from .factories import make_record

ALL = [
    plot_rate_vs_reset,
    plot_heatmap,
    plot_rate_by_position,
    plot_cumulative_detection,
    plot_durations,
]


def frame(specs) -> pd.DataFrame:
    """Synthetic trials: (version, reset_freq, since_reset, outcome, count[, mode])."""
    out, trial = [], 0
    for spec in specs:
        version, reset_freq, since_reset, outcome, count = spec[:5]
        mode = spec[5] if len(spec) > 5 else "daemonless"
        for _ in range(count):
            trial += 1
            out.append(
                make_record(
                    trial,
                    outcome,
                    version=version,
                    duration_s=0.4 + 0.01 * trial,
                    mode=mode,
                    reset_freq=reset_freq,
                    since_reset=since_reset,
                ).to_row()
            )
    return derive(pd.DataFrame(out))


@pytest.fixture
def two_versions() -> pd.DataFrame:
    return frame(
        [
            ("v0.9.0", 1, 1, "missing_layer", 3),
            ("v0.9.0", 1, 1, "ok", 7),
            ("v0.9.0", 4, 1, "missing_layer", 2),
            ("v0.9.0", 4, 2, "ok", 8),
            ("v0.9.1", 1, 1, "ok", 10),
            ("v0.9.1", 4, 1, "ok", 5),
            ("v0.9.1", 4, 2, "ok", 5, "daemon"),
            ("v0.9.1", 4, 2, "build_error", 3),
        ]
    )


def visible_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize("plot", ALL)
def test_empty_data_gives_no_data_figure(plot):
    for empty in (frame([]), pd.DataFrame(), frame([("v0.9.0", 1, 1, "build_error", 3)])):
        if plot is plot_durations and len(empty):
            continue  # build errors still have durations
        fig = plot(empty)
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert "no data" in visible_texts(ax)
        assert ax.get_title()


def test_rate_vs_reset(two_versions):
    fig = plot_rate_vs_reset(two_versions)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "reset frequency" in ax.get_xlabel()
    assert "P(missing layer)" in ax.get_ylabel()
    assert "reset frequency" in ax.get_title()
    assert len(ax.containers) == 2  # one errorbar series per version
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["v0.9.0", "v0.9.1"]
    xs, ys = ax.containers[0].lines[0].get_data()
    assert list(xs) == [1.0, 4.0]
    assert list(ys) == pytest.approx([0.3, 0.2])


def test_heatmap_annotates_k_of_n(two_versions):
    fig = plot_heatmap(two_versions)
    ax = fig.axes[0]
    assert sorted(visible_texts(ax)) == ["0/10", "0/10", "2/10", "3/10"]
    assert ax.get_xlabel().startswith("reset frequency")
    assert ax.get_ylabel() == "BuildKit version"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["v0.9.0", "v0.9.1"]
    assert len(fig.axes) == 2  # plus the colour bar
    assert fig.axes[1].get_ylabel() == "failure rate"


def test_rate_by_position(two_versions):
    fig = plot_rate_by_position(two_versions)
    ax = fig.axes[0]
    assert "since the last reset" in ax.get_xlabel()
    assert len(ax.containers) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]


def test_cumulative_detection(two_versions):
    fig = plot_cumulative_detection(two_versions)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "number of tries"
    assert "at least one" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["v0.9.0 (25.0%/try)", "v0.9.1 (0%/try)"]
    assert len(ax.collections) == 2  # one interval band per version
    assert "95%" in visible_texts(ax)
    # curves + the tries-needed marker for v0.9.0 + the 95% line
    assert len(ax.lines) == 4
    line95 = [ln for ln in ax.lines if list(ln.get_ydata()) == [0.95, 0.95]]
    assert len(line95) == 1


def test_durations(two_versions):
    fig = plot_durations(two_versions)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "seconds per try"
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "container/daemon",
        "container/daemonless",
    ]


def test_durations_draw_bands_not_points():
    """A hundred thousand tries draw the same few artists as ten (no per-try markers)."""
    rng = np.random.default_rng(1)
    n = 100_000
    df = pd.DataFrame(
        {
            "backend": "container",
            "mode": rng.choice(["daemon", "daemonless"], n),
            "duration_s": rng.lognormal(0.0, 1.0, n),  # long tail: a box plot's outliers
            "counted": True,
            "failed": False,
            "version_label": "v0.9.0",
        }
    )
    ax = plot_durations(df).axes[0]
    assert all(len(line.get_xydata()) <= 2 for line in ax.lines)
    points = sum(len(c.get_paths()) for c in ax.collections) + len(ax.patches)
    assert points <= 10
    median = df.loc[df["mode"] == "daemon", "duration_s"].median()
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("n = ")] == [
        f"n = {(df['mode'] == 'daemon').sum():,}",
        f"n = {(df['mode'] == 'daemonless').sum():,}",
    ]
    medians = [c for c in ax.collections if c.get_linewidth()[0] == 2]
    assert abs(medians[0].get_segments()[0][0][1] - median) < 1e-9


def test_figures_save_as_png(two_versions, tmp_path):
    for plot in ALL:
        path = tmp_path / f"{plot.__name__}.png"
        plot(two_versions).savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def dashed(ax) -> list:
    return [line for line in ax.lines if line.get_linestyle() == "--"]


def dotted(ax) -> list:
    return [line for line in ax.lines if line.get_linestyle() == ":"]


def test_rate_vs_reset_draws_the_position_model_prediction(two_versions):
    ax = plot_rate_vs_reset(two_versions).axes[0]
    (line,) = dashed(ax)  # v0.9.0 only: v0.9.1 never failed
    xs, ys = line.get_data()
    # positions 1 and 2 were run: r(K) for K <= 2 rests on observed positions ...
    assert list(xs) == [1.0, 2.0]
    # h(1) = 5/12 (position 1 in both cells), h(p >= 2) = 0/8: r(K) = h(1) / K
    assert list(ys) == pytest.approx([5 / 12, 5 / 24])
    # ... and K = 3, 4 extrapolate beyond position 2: dotted, and the title says so
    (beyond,) = dotted(ax)
    assert list(beyond.get_data()[0]) == [2.0, 3.0, 4.0]
    assert list(beyond.get_data()[1]) == pytest.approx([5 / 24, 5 / 36, 5 / 48])
    assert "position-model prediction" in ax.get_title() and "dotted: extrapolated" in (
        ax.get_title()
    )
    assert "cycle-robust interval" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["v0.9.0", "v0.9.1"]
    assert dashed(plot_rate_vs_reset(two_versions, model=False).axes[0]) == []
    assert len(dashed(plot_rate_vs_reset(two_versions, model=True).axes[0])) == 2


def test_rate_vs_reset_leaves_out_the_curve_of_a_version_run_at_one_k(two_versions):
    one_k = two_versions[two_versions["reset_freq"] == 4]
    ax = plot_rate_vs_reset(one_k).axes[0]
    assert dashed(ax) == [] and dotted(ax) == []


def test_rate_vs_reset_without_later_positions_draws_no_model():
    only_first = frame([("v0.9.0", 1, 1, "missing_layer", 3), ("v0.9.0", 1, 1, "ok", 7)])
    ax = plot_rate_vs_reset(only_first).axes[0]
    assert dashed(ax) == [] and "position-model" not in ax.get_title()


def test_rate_by_position_draws_the_fitted_hazard(two_versions):
    ax = plot_rate_by_position(two_versions).axes[0]
    (line,) = dashed(ax)
    assert list(line.get_data()[1]) == pytest.approx([5 / 12, 0.0])
    assert "fitted position model" in ax.get_title()
