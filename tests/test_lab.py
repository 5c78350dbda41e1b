"""Lab resources on the real engine: registries, mirror seeding, state volumes, cleanup."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request

import docker.errors
import pytest

from repro_lib import lab
from repro_lib.config import OWNER_PID_LABEL, RUN_LABEL
from repro_lib.errors import InfraError, MissingRequirement, UsageError


def _listening_addresses(port: int) -> set[str]:
    """Local addresses bound to ``port`` in LISTEN state, read from /proc/net/tcp."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_registry_starts_serves_on_loopback_and_is_removed(docker_client, fixture_images):
    run_id = lab.new_run_id("t")
    with lab.Registry(docker_client, run_id, role="cache", image=fixture_images["registry"]) as reg:
        with urllib.request.urlopen(f"{reg.url}/v2/", timeout=5) as resp:
            assert resp.status == 200
        assert _listening_addresses(reg.port) == {"127.0.0.1"}
        c = docker_client.containers.get(reg.container.id)
        assert c.attrs["HostConfig"]["NetworkMode"] == "host"
        assert c.labels[RUN_LABEL] == run_id
        assert lab.leftovers(docker_client, run_id)["containers"]
    assert lab.leftovers(docker_client, run_id) == {"containers": [], "volumes": []}


def test_registry_refuses_a_taken_port(docker_client, fixture_images):
    run_id = lab.new_run_id("t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with (
            pytest.raises(InfraError, match="already taken"),
            lab.Registry(
                docker_client, run_id, role="cache", image=fixture_images["registry"], port=port
            ),
        ):
            pass
    assert lab.leftovers(docker_client, run_id) == {"containers": [], "volumes": []}


def test_registry_image_absent_is_a_missing_requirement(docker_client):
    with (
        pytest.raises(MissingRequirement, match="not present locally"),
        lab.Registry(
            docker_client, lab.new_run_id("t"), role="cache", image="repro-lib-test/absent:1"
        ),
    ):
        pass


def test_offline_mirror_seeding_makes_the_base_image_pullable(docker_client, fixture_images):
    run_id = lab.new_run_id("t")
    base = fixture_images["base"]
    with lab.Registry(
        docker_client, run_id, role="mirror", image=fixture_images["registry"]
    ) as mirror:
        pushed = lab.seed_mirror(docker_client, mirror, [base])
        path, tag = lab.docker_hub_path(base)
        assert pushed == [f"{mirror.address}/{path}:{tag}"]
        assert mirror.has(path, tag)
        # seeding again skips what the mirror already holds
        assert lab.seed_mirror(docker_client, mirror, [base]) == []
        # pull it back through the mirror under a fresh name and compare the layers
        ref = f"{mirror.address}/{path}"
        pulled = docker_client.images.pull(ref, tag=tag)
        try:
            original = docker_client.images.get(base)
            assert pulled.attrs["RootFS"]["Layers"] == original.attrs["RootFS"]["Layers"]
        finally:
            docker_client.images.remove(f"{ref}:{tag}", force=True)


def test_docker_hub_path_and_split_tag():
    assert lab.docker_hub_path("alpine:latest") == ("library/alpine", "latest")
    assert lab.docker_hub_path("alpine") == ("library/alpine", "latest")
    assert lab.docker_hub_path("docker.io/user/app:1") == ("user/app", "1")
    assert lab.split_tag("127.0.0.1:5000/a/b") == ("127.0.0.1:5000/a/b", "latest")
    assert lab.split_tag("127.0.0.1:5000/a/b:t") == ("127.0.0.1:5000/a/b", "t")
    with pytest.raises(UsageError):
        lab.docker_hub_path("quay.io/x/y:1")


def test_state_volume_reset_yields_a_fresh_volume(docker_client, fixture_images):
    run_id = lab.new_run_id("t")
    base = fixture_images["base"]

    def run(volume: str, cmd: str) -> str:
        out = docker_client.containers.run(
            base,
            ["sh", "-c", cmd],
            volumes={volume: {"bind": "/state"}},
            network_mode="host",
            remove=True,
            labels=lab.labels(run_id),
        )
        return out.decode()

    with lab.StateVolume(docker_client, run_id) as state:
        first = state.name
        run(first, "echo cached > /state/marker")
        assert run(first, "cat /state/marker").strip() == "cached"
        state.reset()
        assert state.name != first
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(first)
        assert run(state.name, "ls /state").strip() == ""
        assert docker_client.volumes.get(state.name).attrs["Labels"][RUN_LABEL] == run_id
    assert lab.leftovers(docker_client, run_id)["volumes"] == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_reaps_dead_runs_but_never_live_ones(docker_client):
    dead_run, live_run = lab.new_run_id("dead"), lab.new_run_id("live")
    dead_labels = lab.labels(dead_run)
    dead_labels[OWNER_PID_LABEL] = str(_dead_pid())
    live_labels = lab.labels(live_run)
    live_labels[OWNER_PID_LABEL] = "1"  # init never dies: a run that is still going
    dead = docker_client.volumes.create(name=f"repro-lib-{dead_run}", labels=dead_labels)
    live = docker_client.volumes.create(name=f"repro-lib-{live_run}", labels=live_labels)
    try:
        result = lab.sweep(docker_client)
        assert dead.name in result.volumes
        assert live.name in result.skipped_live
        docker_client.volumes.get(live.name)
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(dead.name)
    finally:
        lab.sweep(docker_client, live_run)
    assert lab.leftovers(docker_client, live_run)["volumes"] == []


def test_labels_refuse_the_reserved_namespace():
    with pytest.raises(UsageError):
        lab.labels("r1", **{"repro-lib.run": "other"})
    assert lab.labels("r1", team="x")["team"] == "x"


def test_wait_until_times_out_with_logs():
    with pytest.raises(lab.ReadinessTimeout) as info:
        lab.wait_until(lambda: False, timeout=0.3, interval=0.05, what="thing", logs=lambda: "tail")
    assert info.value.logs == "tail"
    assert "thing not ready" in str(info.value)


def test_connect_to_an_absent_engine_is_a_clear_error(tmp_path):
    with pytest.raises(MissingRequirement, match="not reachable"):
        lab.connect(f"unix://{tmp_path}/nothing.sock")


def test_host_facts(docker_client):
    facts = lab.HostFacts.of(docker_client)
    assert facts.engine_version
    assert facts.kernel
    json.dumps(facts.__dict__)


def test_registry_moves_on_when_its_chosen_port_is_taken(
    docker_client, fixture_images, monkeypatch
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, lab.free_port()])
        monkeypatch.setattr(lab.registry, "free_port", lambda: next(ports))
        run_id = lab.new_run_id("t")
        with lab.Registry(
            docker_client, run_id, role="cache", image=fixture_images["registry"]
        ) as reg:
            assert reg.port != busy
            assert reg.answers_http()
    assert lab.leftovers(docker_client, run_id) == {"containers": [], "volumes": []}
