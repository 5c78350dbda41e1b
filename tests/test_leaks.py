"""A batch leaves the engine with the containers and volumes it found, labelled or not.

An image's ``VOLUME`` gives each of its containers an anonymous volume unless
something is mounted there; removing the container without ``v=True`` leaves
that volume behind, with no label for ``repro-lib clean`` to find. The moby/buildkit
images declare one (``VOLUME /home/user/.local/share/buildkit``), so does
``registry:2``. The stand-in images here declare volumes the same way.
"""

from __future__ import annotations

import json

import pytest

from repro_lib import lab
from repro_lib.builders import BatchEnv
from repro_lib.builders.container import ContainerBackend
from repro_lib.builders.container_flags import ROOTLESS_STATE
from repro_lib.errors import InfraError
from repro_lib.scenario import load_scenario
from repro_lib.store import Store

from .conftest import CONTAINER_ARGS, ENGINE_ARGS, engine_objects, objects_added, run_cli
from .test_container_backend import fake_rootfs

STAND_IN = "repro-lib-test/volume-buildkit:v0.0.0-rootless"
STAND_IN_BROKEN = "repro-lib-test/volume-buildkit:v0.0.0-no-rootlesskit"
# a volume the image declares and the lab mounts nothing on: always an anonymous one
UNMOUNTED_VOLUME = "/var/cache/stand-in"
# daemon mode: buildkitd only listens where the lab tells it to, and the buildctl the lab
# copies out to the host answers its readiness probe and writes the expected tree as output
BUILDKITD = b"""#!/bin/sh
for a in "$@"; do case "$a" in tcp://*) addr="${a#tcp://}" ;; esac; done
exec busybox httpd -f -p "$addr" -h /tmp
"""
ROOTLESSKIT = b'#!/bin/sh\nexec "$@"\n'
BUILDCTL = b"""#!/bin/sh
set -e
case " $* " in
  *" --version "*) echo "buildctl github.com/moby/buildkit v0.0.0 stand-in" ;;
  *" build "*)
    for a in "$@"; do
      case "$a" in
        context=*) ctx="${a#context=}" ;;
        type=tar,dest=*) dest="${a#type=tar,dest=}" ;;
      esac
    done
    root=$(mktemp -d)
    mkdir "$root/repro" && cp "$ctx/repro.txt" "$root/"
    tar -cf "$dest" -C "$root" . && rm -r "$root" ;;
esac
"""


def _anonymous_mounts(client, image: str) -> dict[str, str]:
    """Where a fresh container of ``image`` gets which kind of mount."""
    probe = client.containers.create(image, ["true"], labels=lab.labels("t-volume-probe"))
    try:
        return {m["Destination"]: m["Type"] for m in probe.attrs["Mounts"]}
    finally:
        probe.remove(force=True, v=True)


def _import_stand_in(client, ref: str, programs: dict[str, bytes]) -> None:
    """The daemonless stand-in plus ``programs`` in /usr/bin, declaring moby's volume and one
    more, each of which must give a bare container an anonymous volume."""
    repo, tag = ref.rsplit(":", 1)
    client.api.import_image_from_data(
        fake_rootfs({f"usr/bin/{name}": script for name, script in programs.items()}),
        repository=repo,
        tag=tag,
        changes=[
            "ENV PATH=/usr/bin:/bin",
            "USER 1000:1000",
            f"VOLUME {ROOTLESS_STATE}",
            f"VOLUME {UNMOUNTED_VOLUME}",
        ],
    )
    mounts = _anonymous_mounts(client, ref)
    assert mounts == {ROOTLESS_STATE: "volume", UNMOUNTED_VOLUME: "volume"}, mounts


@pytest.fixture(scope="module")
def buildkit_with_volumes(docker_client, fixture_images):
    """A stand-in that runs daemonless and daemon mode."""
    try:
        _import_stand_in(
            docker_client,
            STAND_IN,
            {"buildctl": BUILDCTL, "buildkitd": BUILDKITD, "rootlesskit": ROOTLESSKIT},
        )
        yield STAND_IN
    finally:
        docker_client.images.remove(STAND_IN, force=True)


@pytest.fixture
def buildkitd_that_cannot_start(docker_client, fixture_images):
    """A stand-in without ``rootlesskit``: the engine refuses to start its buildkitd."""
    try:
        _import_stand_in(docker_client, STAND_IN_BROKEN, {"buildctl": BUILDCTL})
        yield STAND_IN_BROKEN
    finally:
        docker_client.images.remove(STAND_IN_BROKEN, force=True)


class _NoRegistry:
    address = "127.0.0.1:1"  # named in buildkitd's config, never reached


def _daemon_backend(client, image: str, work_dir) -> ContainerBackend:
    backend = ContainerBackend(image, mode="daemon")
    backend.env = BatchEnv(
        client=client,
        run_id=lab.new_run_id("t"),
        scenario=load_scenario(),
        cache_registry=_NoRegistry(),
        mirror=None,
        work_dir=work_dir,
    )
    return backend


def test_copying_buildctl_out_of_the_image_leaves_no_volume(
    docker_client, buildkit_with_volumes, tmp_path
):
    backend = _daemon_backend(docker_client, buildkit_with_volumes, tmp_path)
    before = engine_objects(docker_client)
    copied = backend._host_buildctl()
    assert copied == tmp_path / "bin" / "buildctl-v0.0.0"  # copied out, and it runs here
    after = engine_objects(docker_client)
    assert after == before, objects_added(before, after)


def test_a_buildkitd_that_cannot_start_is_removed_with_its_volumes(
    docker_client, buildkitd_that_cannot_start, tmp_path
):
    backend = _daemon_backend(docker_client, buildkitd_that_cannot_start, tmp_path)
    backend.state = lab.StateVolume(docker_client, backend.env.run_id)
    before = engine_objects(docker_client)
    with backend.state, pytest.raises(InfraError, match="cannot start buildkitd.*rootlesskit"):
        backend._start_daemon()
    after = engine_objects(docker_client)
    assert after == before, objects_added(before, after)


@pytest.mark.parametrize(
    "mode, cache",
    # a local cache: the export container outlives its build until the cache is copied out
    [("daemonless", "local"), ("daemon", "registry")],
)
def test_a_stand_in_batch_removes_its_containers_with_their_volumes(
    docker_client, buildkit_with_volumes, lab_home, mode, cache
):
    before = engine_objects(docker_client)
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        buildkit_with_volumes,
        "--mode",
        mode,
        "--cache",
        cache,
        "--tries",
        "3",
        "--reset-freq",
        "2",  # daemon mode: a second buildkitd after the reset
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["tries"] == 3 and summary["failures"] == 0, summary
    with Store(lab_home / "data/raw/trials.sqlite") as store:
        records = store.trials(summary["run_id"])
    assert {r.mode for r in records} == {mode}
    if mode == "daemon":
        assert {r.buildctl_via for r in records} == {"host"}  # the copied-out buildctl ran
    after = engine_objects(docker_client)
    assert after == before, objects_added(before, after)


def test_a_registry_removes_its_container_with_its_volumes(docker_client, fixture_images):
    ref = "repro-lib-test/volume-registry:2"
    source = docker_client.containers.create(
        fixture_images["registry"], labels=lab.labels("t-volume-registry")
    )
    try:
        source.commit(*ref.split(":"), changes=[f"VOLUME {UNMOUNTED_VOLUME}"])
    finally:
        source.remove(force=True, v=True)
    try:
        assert _anonymous_mounts(docker_client, ref)[UNMOUNTED_VOLUME] == "volume"
        before = engine_objects(docker_client)
        with lab.Registry(docker_client, lab.new_run_id("t"), role="leak", image=ref) as registry:
            assert registry.answers_http()
        after = engine_objects(docker_client)
        assert after == before, objects_added(before, after)
    finally:
        docker_client.images.remove(ref, force=True)


@pytest.mark.parametrize("kind", ["daemonless", "daemon", "engine"])
def test_a_batch_leaves_as_many_containers_and_volumes_as_it_found(
    request, docker_client, fixture_images, lab_home, kind
):
    if kind == "engine":
        request.getfixturevalue("docker_cli")
        args = ENGINE_ARGS
    else:
        image = request.getfixturevalue("affected_buildkit")
        args = (*CONTAINER_ARGS, "--image", image, "--mode", kind)
    before = engine_objects(docker_client)
    proc = run_cli("reproduce", *args, "--tries", "2", home=lab_home, timeout=1200)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a layer went missing
    after = engine_objects(docker_client)
    counts = {what: len(names) for what, names in after.items()}
    assert counts == {what: len(names) for what, names in before.items()}, objects_added(
        before, after
    )
