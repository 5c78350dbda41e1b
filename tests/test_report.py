"""write_report on synthetic stores: empty, only build errors, one cell, several versions.

The stores are synthetic rows written through ``Store.append``: test data for
the report code, not BuildKit evidence.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from repro_lib.errors import UsageError  # noqa: E402
from repro_lib.records import Outcome, TrialRecord  # noqa: E402
from repro_lib.report import default_command, write_report  # noqa: E402
from repro_lib.results import load_results  # noqa: E402
from repro_lib.store import Store  # noqa: E402

from .factories import make_record


def fill(store: Store, run_id: str, specs, *, params=None, sweep_id=None) -> None:
    """Append trials: specs of (version, reset_freq, since_reset, outcome, count)."""
    store.start_run(run_id, params or {"tries": 10}, sweep_id=sweep_id)
    trial = 0
    for version, reset_freq, since_reset, outcome, count in specs:
        for _ in range(count):
            trial += 1
            store.append(
                make_record(
                    trial,
                    outcome,
                    version=version,
                    run_id=run_id,
                    started_at=f"2024-05-01T10:{trial // 60:02d}:{trial % 60:02d}+00:00",
                    reset_freq=reset_freq,
                    since_reset=since_reset,
                    sweep_id=sweep_id,
                    engine_version="24.0.5",
                    kernel="6.1.0-test",
                    package_version="0.1.0",
                    detail="failed to solve: boom" if outcome == "build_error" else "",
                )
            )
    store.finish_run(run_id, "done")


def cycles(version, K, count, outcome="ok"):
    """Specs for ``count`` full reset cycles of ``K`` tries each, in trial order."""
    return [(version, K, p, outcome, 1) for _ in range(count) for p in range(1, K + 1)]


def pngs(out) -> list[str]:
    return sorted(p.name for p in out.glob("*.png"))


def test_missing_store(tmp_path):
    with pytest.raises(UsageError):
        write_report(tmp_path / "absent.sqlite", tmp_path / "out")


def test_empty_store(tmp_path):
    Store(tmp_path / "s.sqlite").close()
    out = tmp_path / "out"
    path = write_report(tmp_path / "s.sqlite", out)
    text = path.read_text()
    assert path == out / "report.md"
    assert text.startswith("# BuildKit missing-layer reproduction")
    assert "## No trials" in text and "repro-lib reproduce" in text
    assert pngs(out) == []
    assert (out / "trials.csv").exists()
    assert "![" not in text


def test_only_build_errors(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(st, "r1", [("v0.9.0", 1, 1, "build_error", 4), ("v0.9.0", 1, 1, "infra_error", 1)])
    out = tmp_path / "out"
    text = write_report(tmp_path / "s.sqlite", out).read_text()
    assert "No usable trials" in text
    assert "4 build errors, 1 infra errors" in text
    assert "4× `failed to solve: boom`" in text
    assert (
        "| `backend=container/version=v0.9.0/cache=registry/reset=1/mode=daemonless` "
        "| 0 | 0 | 0 | 4 | 1 | – | – | – | – |" in text
    )
    assert pngs(out) == []
    assert len(pd.read_csv(out / "trials.csv")) == 5


def test_single_cell(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(
            st,
            "r1",
            [("v0.9.0", 1, 1, "missing_layer", 3), ("v0.9.0", 1, 1, "ok", 17)],
            params={"version": "v0.9.0", "tries": 20, "reset_freq": 1, "keep": True, "x": None},
        )
    out = tmp_path / "out"
    text = write_report(tmp_path / "s.sqlite", out).read_text()
    assert "repro-lib reproduce --version v0.9.0 --tries 20 --reset-freq 1 --keep" in text
    assert (
        "**v0.9.0**: affected — 3 of 20 in 20 cycles (15.0%, 95% Wilson interval 5.2%–36.0%, "
        "design effect 1; one try per cycle)"
    ) in text
    assert "nothing to compare" in text
    assert "Fisher" not in text
    # K = 1: every try is its own cycle, the interval is Wilson's, unchanged
    assert "| 15.0% | 5.2%–36.0% | 1 | 5.2%–36.0% |" in text
    assert "## Failure probability by position since reset" in text
    for name in pngs(out):
        assert f"]({name})" in text
    assert "rate_vs_reset.png" in pngs(out)


def test_multi_version_store(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(
            st,
            "r1",
            [
                ("v0.9.0", 1, 1, "missing_layer", 8),
                ("v0.9.0", 1, 1, "ok", 2),
                ("v0.9.0", 4, 2, "missing_layer", 1),
                ("v0.9.0", 4, 2, "ok", 9),
                ("v0.9.0", 4, 1, "build_error", 2),
            ],
            params={"argv": ["run", "--version", "v0.9.0"]},
            sweep_id="s1",
        )
        fill(
            st,
            "r2",
            [("v0.9.1", 1, 1, "ok", 6), *cycles("v0.9.1", 4, 75)],
            params={"argv": ["run", "--version", "v0.9.1"]},
            sweep_id="s1",
        )
        fill(st, "other", [("v0.8.3", 1, 1, "ok", 3)], sweep_id="s2")
    out = tmp_path / "report"
    text = write_report(tmp_path / "s.sqlite", out, sweep="s1").read_text()
    assert "sweep `s1`" in text
    assert "v0.8.3" not in text  # other sweep left out
    assert "repro-lib run --version v0.9.0\nrepro-lib run --version v0.9.1" in text
    assert "| Docker Engine | `24.0.5` |" in text
    assert "`moby/buildkit:v0.9.1-rootless`" in text
    assert "**v0.9.0**: affected" in text
    # 306 clean tries, but in 6 + 75 reset cycles: the bound counts cycles, not tries
    assert (
        "**v0.9.1**: not enough evidence — 0 of 306 in 81 complete reset cycles, 95% upper "
        "bound 3.6% counting cycles; 299 complete clean reset cycles would bound it below 1.0%"
    ) in text
    assert "it assumes independent cycles and allows any dependence" in text
    assert "| `v0.9.0` vs `v0.9.1` | 9/20 | 0/306 |" in text
    assert "2 tries ended in a build error" in text
    assert pngs(out) == [
        "cumulative_detection.png",
        "durations.png",
        "heatmap.png",
        "rate_by_position.png",
        "rate_vs_reset.png",
    ]
    assert len(pd.read_csv(out / "trials.csv")) == 328
    # a table row for every cell
    assert text.count("| `backend=container/") == 4


def test_dataframe_input_and_explicit_command(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(st, "r1", [("v0.9.0", 1, 1, "ok", 4)])
    df = load_results(tmp_path / "s.sqlite")
    text = write_report(df, tmp_path / "out", command="make data").read_text()
    assert "```sh\nmake data\n```" in text
    assert "**v0.9.0**: not enough evidence — 0 of 4, 95% upper bound 52.7%" in text


def test_default_command():
    assert default_command([]) is None
    batch = {
        "backend": "container",
        "image": "moby/buildkit:v0.9.0-rootless",
        "tries": 20,
        "offline": True,
        "privileged": False,
        "security_opt": None,
        "buildkitd_flags": "",
        "scenario_name": "reference",
    }
    assert default_command([{"params": batch}, {"params": batch}]) == (
        "repro-lib reproduce --backend container --image moby/buildkit:v0.9.0-rootless"
        " --tries 20 --offline --no-privileged"
    )
    runs = [{"params": {"command": "sweep", "plan": "plan 1.json", "versions": ["a", "b"]}}]
    assert default_command(runs) == "repro-lib sweep --plan 'plan 1.json' --versions a --versions b"


def test_unknown_sweep_gives_empty_report(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(st, "r1", [("v0.9.0", 1, 1, "ok", 2)], sweep_id="s1")
    text = write_report(tmp_path / "s.sqlite", tmp_path / "out", sweep="nope").read_text()
    assert "There are no recorded trials for sweep `nope`" in text


def test_cross_version_cache_is_named(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        st.start_run("r1", {"image": "moby/buildkit:v0.7.0-rootless"})
        for trial in (1, 2):
            st.append(
                TrialRecord(
                    run_id="r1",
                    trial=trial,
                    started_at="2024-05-01T10:00:00+00:00",
                    duration_s=0.5,
                    backend="container",
                    image="moby/buildkit:v0.7.0-rootless",
                    version="v0.7.0",
                    cache_image="moby/buildkit:v0.9.0-rootless",
                    cache_version="v0.9.0",
                    cache_type="registry",
                    mode="daemonless",
                    reset_freq=1,
                    since_reset=1,
                    reset_index=trial - 1,
                    lane=0,
                    outcome=Outcome.MISSING_LAYER if trial == 1 else Outcome.OK,
                    cache_hits=2,
                )
            )
    text = write_report(tmp_path / "s.sqlite", tmp_path / "out").read_text()
    assert "**v0.7.0 importing a cache exported by v0.9.0**: affected" in text
    assert "`version=v0.7.0<-v0.9.0`" not in text  # the cell key is whole, in one code span
    assert "/version=v0.7.0<-v0.9.0/" in text


def test_report_flags_a_cell_whose_hosts_disagree(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.start_run("r", {"tries": 40}, sweep_id="s")
        for trial in range(1, 41):
            host = "host-a" if trial <= 20 else "host-b"
            failed = trial <= 12 or trial == 25  # host-a 12/20, host-b 1/20
            store.append(
                make_record(
                    trial,
                    "missing_layer" if failed else "ok",
                    run_id="r",
                    sweep_id="s",
                    cell="backend=container/version=v0.9.0",
                    host=host,
                    cpus=2,
                )
            )
    out = write_report(tmp_path / "s.sqlite", tmp_path / "report")
    text = out.read_text()
    assert "host-a (2 CPUs): 20 trials; host-b (2 CPUs): 20 trials" in text
    assert "Hosts disagree in cell backend=container/version=v0.9.0" in text
    assert "Fisher exact p" in text


def test_report_flags_a_cell_whose_batches_disagree(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        for run, k in (("b1", 2), ("b2", 15), ("b3", 1)):
            fill(st, run, [("v0.9.0", 1, 1, "missing_layer", k), ("v0.9.0", 1, 1, "ok", 20 - k)])
        for run, k in (("c1", 3), ("c2", 4)):  # a cell whose two batches agree
            fill(st, run, [("v0.8.3", 1, 1, "missing_layer", k), ("v0.8.3", 1, 1, "ok", 20 - k)])
    text = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    assert (
        "Batches disagree in cell backend=container/version=v0.9.0/cache=registry/reset=1/"
        "mode=daemonless (b1: 2/20, b2: 15/20, b3: 1/20; chi-square (df 2) p =" in text
    )
    assert "Tarone over-dispersion p =" in text and "batch-robust interval" in text
    assert "1 cell(s) were recorded in several batches whose failure rates agree" in text


def test_report_hazard_model_goodness_of_fit_and_odds_ratios(tmp_path):
    def cycle(version, K, hazard, count):
        """``count`` cycles in trial order; position p fails in round(h_p count) of them,
        spread over the cycles."""
        specs = []
        for c in range(count):
            for p in range(1, K + 1):
                failed = (7 * c + 3 * p) % count < round(hazard[p - 1] * count)
                specs.append((version, K, p, "missing_layer" if failed else "ok", 1))
        return specs

    with Store(tmp_path / "s.sqlite") as st:
        fill(st, "r1", cycle("v0.9.0", 2, [0.15, 0.3], 20))
        fill(st, "r2", cycle("v0.9.0", 4, [0.15, 0.3, 0.25, 0.2], 20))
        fill(st, "r3", cycle("v0.8.3", 2, [0.1, 0.5], 20))
        fill(st, "r4", cycle("v0.8.3", 4, [0.1, 0.45, 0.35, 0.3], 20))
    text = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    assert "### The position model and the rate at each reset frequency" in text
    assert "likelihood-ratio chi2 =" in text and "with 40 reset cycles as clusters" in text
    assert "fitted on K = 2, the position model predicts the held-out K = 4" in text
    assert "df 1, p =" in text
    assert "| `v0.9.0` | 4 | 18/80 |" in text  # 3 + 6 + 5 + 4 of 80
    assert "| held out" in text and "| in-sample |" in text
    assert "## Do failures cluster within a reset cycle?" in text
    assert "### Odds ratios" in text
    assert "| log2(K) (per doubling of K) |" in text and "| version = v0.9.0 |" in text
    assert "| position (per step) |" in text


def test_thin_data_has_no_model_sections(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        fill(st, "r1", [("v0.9.0", 1, 1, "missing_layer", 3), ("v0.9.0", 1, 1, "ok", 17)])
    text = write_report(tmp_path / "s.sqlite", tmp_path / "report").read_text()
    assert "### Odds ratios" not in text and "### The position model" not in text
    assert "## Do failures cluster" not in text  # K = 1: no cycle holds two tries
    assert "Batches disagree" not in text


def test_the_report_says_how_a_sweep_ended(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        st.start_sweep("s-refused", {"tries": 5})
        st.set_sweep_status("s-refused", "refused")  # its start failed a host check
        st.start_sweep("s-short", {"tries": 5})
        st.set_sweep_status("s-short", "incomplete")
        fill(st, "s-short-c000", [("v0.9.0", 1, 1, "ok", 3)], sweep_id="s-short")
    refused = write_report(path, tmp_path / "a", sweep="s-refused").read_text()
    assert "Sweep `s-refused`: **refused** (its last start was refused" in refused
    assert "## No trials" in refused
    short = write_report(path, tmp_path / "b").read_text()
    assert "Sweep `s-short`: **incomplete** (it ended with planned trials missing" in short
