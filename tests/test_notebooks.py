"""The notebooks run top to bottom on real lab data.

Each notebook is executed with nbclient in a fresh ``python3`` kernel whose
working directory is ``notebooks/`` and whose ``REPRO_LIB_HOME`` is a temporary
directory; parameters are injected papermill-style in a cell right after the
``parameters``-tagged one. Executed copies live only in memory: nothing is
written into ``notebooks/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from repro_lib.config import Paths
from repro_lib.results import default_store, findings_store, load_results
from repro_lib.store import Store

from .test_report_culprit import CONFIDENT, SHORT, search

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 300


def _kernel_available() -> str | None:
    """None when the ``python3`` kernel can start, else the reason it cannot."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return f"no Jupyter kernel named {KERNEL} (python -m ipykernel install --user)"
    return None


@pytest.fixture(scope="session")
def kernel():
    reason = _kernel_available()
    if reason:
        pytest.skip(reason)
    return KERNEL


def parameters_cell(nb) -> int:
    """Index of the cell tagged ``parameters``."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise AssertionError("the notebook has no cell tagged 'parameters'")


def run_notebook(path: Path, parameters: dict[str, Any], home: Path):
    """Execute ``path`` with ``parameters`` injected; return the executed notebook.

    The kernel gets this process's environment (so ``REPRO_LIB_LAB`` and
    ``DOCKER_HOST`` carry over) with ``REPRO_LIB_HOME=home``, and runs in the
    notebook's own directory. A failing cell raises ``CellExecutionError``.
    """
    nb = nbformat.read(path, as_version=4)
    at = parameters_cell(nb)
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=dict(os.environ, REPRO_LIB_HOME=str(home)))
    return nb


def outputs(nb, mime: str | None = None) -> list[dict]:
    found = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    if mime is not None:
        found = [o for o in found if mime in o.get("data", {})]
    return found


def text_of(nb) -> str:
    parts = []
    for o in outputs(nb):
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


# the saved notebooks ----------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "01-reproduce.ipynb",
        "02-sweep.ipynb",
        "03-analysis.ipynb",
        "04-report.ipynb",
        "05-findings.ipynb",
        "06-culprit.ipynb",
    ],
)
def test_notebook_is_saved_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    parameters_cell(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        f"{name} must be saved without outputs"
    )


def test_default_store_prefers_the_project_store(tmp_path):
    paths = Paths(tmp_path)
    assert default_store(paths) == paths.sample_store
    paths.store.parent.mkdir(parents=True)
    paths.store.touch()
    assert default_store(paths) == paths.store


def test_findings_store_prefers_the_findings_dataset(tmp_path):
    paths = Paths(tmp_path)
    assert findings_store(paths) == paths.sample_store
    paths.store.parent.mkdir(parents=True)
    paths.store.touch()  # the project store is not the findings dataset
    assert findings_store(paths) == paths.sample_store
    paths.findings_store.parent.mkdir(parents=True)
    paths.findings_store.touch()
    assert (
        findings_store(paths)
        == paths.findings_store
        == tmp_path / "data/raw/findings/trials.sqlite"
    )


# 01: a real batch ---------------------------------------------------------------
@pytest.mark.docker
def test_reproduce_notebook_runs_a_real_engine_batch(
    kernel, docker_client, fixture_images, docker_cli, tmp_path
):
    home = tmp_path / "home"
    home.mkdir()
    nb = run_notebook(
        NOTEBOOKS / "01-reproduce.ipynb",
        dict(
            BACKEND="engine",
            ALLOW_PRUNE=True,
            OFFLINE=True,
            TRIES=4,
            RESET_FREQ=2,
            BASE_IMAGE=fixture_images["base"],
            REGISTRY_IMAGE=fixture_images["registry"],
        ),
        home,
    )
    df = load_results(Paths(home).store)
    assert len(df) == 4
    assert set(df["backend"]) == {"engine"} and set(df["cache_type"]) == {"inline"}
    assert df["since_reset"].tolist() == [1, 2, 1, 2]
    assert df["run_id"].iloc[0] in text_of(nb)
    assert not any((NOTEBOOKS / "data").glob("**/*")), "the notebook wrote under notebooks/"


@pytest.mark.docker
@pytest.mark.parametrize("cluster", [None, "local"], ids=["lanes", "dask-local"])
def test_sweep_notebook_runs_a_real_engine_sweep(
    kernel, docker_client, fixture_images, docker_cli, tmp_path, cluster
):
    home = tmp_path / "home"
    home.mkdir()
    nb = run_notebook(
        NOTEBOOKS / "02-sweep.ipynb",
        dict(
            BACKEND="engine",
            VERSIONS=["engine"],
            RESET_FREQ=[1, 2],
            TRIES=3,
            LANES=1 if cluster is None else 2,
            CLUSTER=cluster,
            UNTIL_CONFIDENT=False,
            ALLOW_PRUNE=True,
            OFFLINE=True,
            BASE_IMAGE=fixture_images["base"],
            REGISTRY_IMAGE=fixture_images["registry"],
        ),
        home,
    )
    df = load_results(Paths(home).store)
    assert len(df) == 6
    assert df["sweep_id"].nunique() == 1 and df["sweep_id"].iloc[0] in text_of(nb)
    assert sorted(df["reset_freq"].unique().tolist()) == [1, 2]
    assert len(outputs(nb, "image/png")) >= 2
    if cluster:
        assert "Dask dashboard: http://127.0.0.1:" in text_of(nb)
        assert df["host"].nunique() == 2  # one local worker per lane


@pytest.mark.docker
@pytest.mark.buildkit
def test_reproduce_notebook_runs_the_container_backend(
    kernel, docker_client, fixture_images, affected_buildkit, tmp_path
):
    """The default backend (a moby/buildkit container), when such an image is local."""
    nb = run_notebook(
        NOTEBOOKS / "01-reproduce.ipynb",
        dict(
            IMAGE=affected_buildkit,
            TRIES=4,
            RESET_FREQ=2,
            BASE_IMAGE=fixture_images["base"],
            REGISTRY_IMAGE=fixture_images["registry"],
        ),
        tmp_path,
    )
    df = load_results(Paths(tmp_path).store)
    assert len(df) == 4
    assert set(df["backend"]) == {"container"} and set(df["cache_type"]) == {"registry"}
    assert df["run_id"].iloc[0] in text_of(nb)


# 03 and 04: on a store the lab filled -------------------------------------------
@pytest.fixture(scope="module")
def lab_store(docker_client, fixture_images, docker_cli, tmp_path_factory) -> Path:
    """A store holding one small real engine-backend batch whose trial 2 lost repro.txt
    (the controlled backend drops it from the real output)."""
    from repro_lib.batch import BatchOptions, reproduce

    from . import controlled_backend  # noqa: F401  (registers engine-dropping)

    home = tmp_path_factory.mktemp("lab-store")
    paths = Paths(home)
    os.environ["REPRO_LIB_DROP_TRIALS"] = "2"
    options = BatchOptions(
        backend="engine-dropping",
        cache="inline",
        allow_prune=True,
        offline=True,
        tries=6,
        reset_freq=3,
        base_image=fixture_images["base"],
        registry_image=fixture_images["registry"],
    )
    try:
        summary = reproduce(docker_client, options, paths=paths, progress=False)
    finally:
        del os.environ["REPRO_LIB_DROP_TRIALS"]
    assert summary.tries == 6 and summary.failures == 1
    return paths.store


@pytest.fixture
def sample_store() -> Path:
    path = Paths(ROOT).sample_store
    if not path.is_file():
        pytest.skip(f"no sample store shipped yet at {path.relative_to(ROOT)}")
    return path


def _check_analysis(store: Path, home: Path) -> None:
    nb = run_notebook(NOTEBOOKS / "03-analysis.ipynb", {"STORE": str(store)}, home)
    pngs = outputs(nb, "image/png")
    assert len(pngs) >= 5, f"expected one PNG per plot, got {len(pngs)}"
    assert str(store) in text_of(nb)
    if "lab-store" in str(store):  # its trial 2 lost repro.txt: the lost step is named
        assert "COPY repro.txt /" in text_of(nb)
    derived = Paths(home).processed
    assert (derived / "rates_by_cell.csv").is_file() and (
        derived / "rates_by_version.csv"
    ).is_file()


def _check_report(store: Path, home: Path) -> None:
    out = home / "report-out"
    nb = run_notebook(NOTEBOOKS / "04-report.ipynb", {"STORE": str(store), "OUT": str(out)}, home)
    report = out / "report.md"
    assert report.is_file() and report.read_text(encoding="utf-8").strip()
    assert (out / "trials.csv").is_file()
    assert outputs(nb, "text/markdown"), "the report was not displayed"
    assert not (home / "reports").exists(), "OUT was ignored"


@pytest.mark.docker
def test_analysis_notebook_on_a_lab_store(kernel, lab_store, tmp_path):
    _check_analysis(lab_store, tmp_path)


@pytest.mark.docker
def test_report_notebook_on_a_lab_store(kernel, lab_store, tmp_path):
    _check_report(lab_store, tmp_path)


def test_analysis_notebook_on_the_sample_store(kernel, sample_store, tmp_path):
    _check_analysis(sample_store, tmp_path)


def test_report_notebook_on_the_sample_store(kernel, sample_store, tmp_path):
    _check_report(sample_store, tmp_path)


def test_analysis_notebook_defaults_to_the_project_store(kernel, lab_store, tmp_path):
    """``STORE = None`` reads ``data/raw/trials.sqlite`` under ``REPRO_LIB_HOME``."""
    paths = Paths(tmp_path)
    paths.raw.mkdir(parents=True)
    paths.store.write_bytes(lab_store.read_bytes())
    nb = run_notebook(NOTEBOOKS / "03-analysis.ipynb", {}, tmp_path)
    assert f"6 trials from {paths.store}" in text_of(nb)


# 03 and 04: a list of stores (e.g. CI shards) -------------------------------------
def _split_sample(sample_store: Path, tmp_path: Path) -> list[Path]:
    """Two copies of the sample store holding overlapping halves of its runs."""
    import contextlib
    import shutil
    import sqlite3

    with contextlib.closing(sqlite3.connect(sample_store)) as db:
        runs = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY run_id")]
    halves = []
    for name, keep in (("half-a.sqlite", runs[:4]), ("half-b.sqlite", runs[3:])):
        path = tmp_path / name
        shutil.copyfile(sample_store, path)
        marks = ",".join("?" for _ in keep)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(f"DELETE FROM trials WHERE run_id NOT IN ({marks})", keep)
            db.execute(f"DELETE FROM runs WHERE run_id NOT IN ({marks})", keep)
            db.commit()
        halves.append(path)
    return halves


def test_analysis_notebook_on_a_list_of_stores(kernel, sample_store, tmp_path):
    stores = [str(p) for p in _split_sample(sample_store, tmp_path)]
    nb = run_notebook(NOTEBOOKS / "03-analysis.ipynb", {"STORE": stores}, tmp_path)
    assert f"{len(load_results(sample_store))} trials from {stores}" in text_of(nb)
    merged = (Paths(tmp_path).processed / "rates_by_cell.csv").read_text()
    _check_analysis(sample_store, tmp_path)  # the whole sample, for comparison
    assert (Paths(tmp_path).processed / "rates_by_cell.csv").read_text() == merged


def test_report_notebook_on_a_list_of_stores(kernel, sample_store, tmp_path):
    stores = [str(p) for p in _split_sample(sample_store, tmp_path)]
    out = tmp_path / "report-out"
    run_notebook(NOTEBOOKS / "04-report.ipynb", {"STORE": stores, "OUT": str(out)}, tmp_path)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "`half-a.sqlite`, `half-b.sqlite`" in text
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + len(
        load_results(sample_store)
    )


# 05: findings ----------------------------------------------------------------------
def _check_findings(nb, store: Path) -> None:
    text = text_of(nb)
    assert str(store) in text
    assert "failures/tries" in text  # the findings table
    assert "likelihood-ratio chi2" in text  # the position trend test
    assert "K-curve" in text or "held-out K" in text  # the K-curve check (or why there is none)
    assert "reset cycle" in text  # the dependence analysis, or why there is none
    assert "no cross-version cache import" in text or "<-" in text
    assert "Logistic" in text  # the model or why it cannot be fitted
    assert len(outputs(nb, "image/png")) >= 2


def test_findings_notebook_on_the_sample_store(kernel, sample_store, tmp_path):
    nb = run_notebook(NOTEBOOKS / "05-findings.ipynb", {"STORE": str(sample_store)}, tmp_path)
    _check_findings(nb, sample_store)
    assert "v0.8.3" in text_of(nb) and "v0.9.1" in text_of(nb)


def test_findings_notebook_defaults_to_the_findings_dataset(kernel, sample_store, tmp_path):
    """``STORE = None`` reads ``data/raw/findings/trials.sqlite`` under ``REPRO_LIB_HOME``."""
    paths = Paths(tmp_path)
    paths.findings_store.parent.mkdir(parents=True)
    paths.findings_store.write_bytes(sample_store.read_bytes())
    nb = run_notebook(NOTEBOOKS / "05-findings.ipynb", {}, tmp_path)
    assert f"280 trials from {paths.findings_store}" in text_of(nb)
    # run on the findings dataset, it regenerates the README's figures and table
    figures = tmp_path / "docs" / "findings"
    assert sorted(p.name for p in figures.iterdir()) == [
        "failure-by-position.png",
        "failure-clustering.md",
        "findings-table.md",
        "rate-vs-reset.png",
    ]


def test_findings_notebook_on_the_shipped_findings_dataset(kernel, tmp_path):
    store = Paths(ROOT).findings_store
    if not store.is_file():
        pytest.skip(f"no findings dataset shipped at {store.relative_to(ROOT)}")
    nb = run_notebook(NOTEBOOKS / "05-findings.ipynb", {"STORE": str(store)}, tmp_path)
    _check_findings(nb, store)
    text = text_of(nb)
    # the K-curve of v0.9.0 is a held-out prediction: fit on K = 1, 2, 4, 8, predict the rest
    assert "v0.9.0: fitted on K = 1, 2, 4, 8, the position model predicts the held-out" in text
    assert "K = 3, 6, 16" in text
    # failures cluster within a reset cycle, and not across one
    assert "Failures cluster within a reset cycle" in text and "no effect detected: OR" in text
    # replicate batches of one configuration are compared with each other
    assert "batches agree" in text and "nothing to test" not in text
    # as tables (one row per configuration, one per batch), not one line of every batch
    tables = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs(nb))
    assert "reset=4/mode=daemon</td>" in tables and "findings-02-k4-c001</td>" in tables
    assert max(len(line) for line in text.splitlines()) < 400
    assert "v0.7.2<-v0.9.0" in text  # the cross-version cells


# 06: culprit searches ----------------------------------------------------------------
def test_culprit_notebook_shows_a_stored_search(kernel, tmp_path):
    """Searches saved through the store (test records, as in test_report_culprit) are
    read back and shown: the statement, the tables and one posterior plot."""
    store = tmp_path / "culprit.sqlite"
    with Store(store) as st:
        st.save_search(search(CONFIDENT))
        st.save_search(search(SHORT, status="budget spent", unbuildable=(5,), search_id="c-two"))
    nb = run_notebook(
        NOTEBOOKS / "06-culprit.ipynb", {"STORE": str(store), "SEARCH": "c-two"}, tmp_path
    )
    text = text_of(nb)
    assert f"culprit searches in {store}: 1" in text
    assert "best candidate so far: 04040404" in text and "unbuildable" in text
    assert "s-probe3" in text  # the probes table
    assert len(outputs(nb, "image/png")) == 1
