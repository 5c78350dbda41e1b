"""Shared fixtures: a real Docker engine, the fixture images, a private project root.

Tests that need the engine skip with the reason when none answers; tests that
need a real ``moby/buildkit`` image skip when it is not present locally. After
the session, the engine holds no container or volume the session made, labelled
or not (an anonymous volume carries no label).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from repro_lib import lab
from repro_lib.config import LAB_LABEL, lab_id
from repro_lib.errors import MissingRequirement
from repro_lib.fixtures import BASE_FIXTURE, REGISTRY_FIXTURE, build_fixtures
from repro_lib.testsh_env import NAMES as TESTSH_VARIABLES

# Every object this test session makes belongs to its own lab, so leak checks and
# cleanups never see (or remove) what another lab on this engine is doing.
os.environ.setdefault("REPRO_LIB_LAB", f"test-{uuid.uuid4().hex[:8]}")
# test.sh's variables (RETRIES, ...) change `reproduce`'s defaults: a user's shell must not
# change what the tests run; tests that want them pass them explicitly
for _name in TESTSH_VARIABLES:
    os.environ.pop(_name, None)

BUILDKIT_AFFECTED = os.environ.get("REPRO_LIB_TEST_AFFECTED", "moby/buildkit:v0.9.0-rootless")
BUILDKIT_FIXED = os.environ.get("REPRO_LIB_TEST_FIXED", "moby/buildkit:v0.9.1-rootless")
BUILDKIT_ROOTFUL = os.environ.get("REPRO_LIB_TEST_ROOTFUL", "moby/buildkit:v0.9.0")


def engine_objects(client) -> dict[str, set[str]]:
    """Every container (by name) and volume on the engine, labelled or not.

    Objects another lab labelled as its own are left out: labs sharing an engine
    (several test sessions, a batch next to them) come and go meanwhile.
    """

    def ours(labels: dict[str, str] | None) -> bool:
        return (labels or {}).get(LAB_LABEL, lab_id()) == lab_id()

    containers = client.api.containers(all=True)
    volumes = client.api.volumes().get("Volumes") or []
    return {
        "containers": {c["Names"][0].lstrip("/") for c in containers if ours(c.get("Labels"))},
        "volumes": {v["Name"] for v in volumes if ours(v.get("Labels"))},
    }


def objects_added(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list]:
    return {kind: sorted(after[kind] - before[kind]) for kind in before}


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = lab.connect()
    except MissingRequirement as exc:
        pytest.skip(f"needs a running Docker engine: {exc.one_line()}")
    before = engine_objects(client)
    yield client
    labelled = lab.leftovers(client)
    added = objects_added(before, engine_objects(client))
    if any(labelled.values()) or any(added.values()):
        # only labelled ones are surely ours to remove; the rest is named for a look
        lab.sweep(client, include_live=True)
        pytest.fail(
            f"the test session left objects on the engine: {added} (labelled by the lab: {labelled})"
        )


@pytest.fixture(scope="session")
def fixture_images(docker_client):
    try:
        build_fixtures(docker_client)
    except MissingRequirement as exc:
        pytest.skip(f"cannot build fixture images: {exc.one_line()}")
    return {"registry": REGISTRY_FIXTURE, "base": BASE_FIXTURE}


@pytest.fixture
def lab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_LIB_HOME", str(tmp_path))
    return tmp_path


def has_image(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def affected_buildkit(docker_client):
    if not has_image(docker_client, BUILDKIT_AFFECTED):
        pytest.skip(f"needs the BuildKit image {BUILDKIT_AFFECTED} locally (cannot be pulled here)")
    return BUILDKIT_AFFECTED


@pytest.fixture(scope="session")
def fixed_buildkit(docker_client):
    if not has_image(docker_client, BUILDKIT_FIXED):
        pytest.skip(f"needs the BuildKit image {BUILDKIT_FIXED} locally (cannot be pulled here)")
    return BUILDKIT_FIXED


@pytest.fixture(scope="session")
def rootful_buildkit(docker_client):
    if not has_image(docker_client, BUILDKIT_ROOTFUL):
        pytest.skip(f"needs the BuildKit image {BUILDKIT_ROOTFUL} locally (cannot be pulled here)")
    return BUILDKIT_ROOTFUL


def repro_lib_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "repro_lib", *args]


def run_cli(*args: str, home: Path, timeout: float = 600, env: dict | None = None):
    """Run the real CLI in a subprocess with REPRO_LIB_HOME=home."""
    child_env = dict(os.environ, REPRO_LIB_HOME=str(home), **(env or {}))
    return subprocess.run(
        repro_lib_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        cwd=home,
    )


ENGINE_ARGS = (
    "--backend",
    "engine",
    "--offline",
    "--allow-prune",
    "--base-image",
    BASE_FIXTURE,
    "--registry-image",
    REGISTRY_FIXTURE,
)

CONTAINER_ARGS = ("--offline", "--base-image", BASE_FIXTURE, "--registry-image", REGISTRY_FIXTURE)


@pytest.fixture(scope="session")
def docker_cli(docker_client):
    """The CLI for engine-backend tests, which prune the engine's builder cache.

    They run only on an engine meant for it: the private engine of
    ``scripts/lab test`` (REPRO_LIB_TEST_ENGINE=1) or one the lab started.
    """
    from repro_lib.builders.engine import engine_is_lab_owned, find_docker_cli

    facts = lab.HostFacts.of(docker_client)
    if os.environ.get("REPRO_LIB_TEST_ENGINE") != "1" and not engine_is_lab_owned(
        facts.engine_labels
    ):
        pytest.skip(
            "engine-backend tests prune the builder cache: run them via `scripts/lab test` "
            "or set REPRO_LIB_TEST_ENGINE=1 for a throwaway engine"
        )

    try:
        return find_docker_cli()
    except MissingRequirement as exc:
        pytest.skip(exc.one_line())


def which(name: str) -> str | None:
    return shutil.which(name)
