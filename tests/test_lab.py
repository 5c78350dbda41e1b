"""Lab resources on the real engine: registries, mirror seeding, state volumes, cleanup."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request

import docker.errors
import pytest
import requests

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


class _BusyVolume:
    """A volume the engine reports "in use" for its first ``busy`` removals."""

    name = "repro-lib-test-busy"

    def __init__(self, busy: int):
        self.busy = busy
        self.removed = False

    def remove(self, force: bool = False) -> None:
        if self.busy:
            self.busy -= 1
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError("conflict", response, explanation="volume is in use")
        self.removed = True


def test_remove_volume_waits_while_the_engine_still_holds_it():
    volume = _BusyVolume(busy=2)
    lab.state.remove_volume(volume, timeout=5)
    assert volume.removed


def test_remove_volume_gives_up_with_a_clear_error():
    with pytest.raises(InfraError, match="cannot remove volume repro-lib-test-busy"):
        lab.state.remove_volume(_BusyVolume(busy=10**6), timeout=0.3)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _volume_listing(client, volume: str, image: str) -> str:
    return client.containers.run(
        image,
        ["ls", "/data"],
        volumes={volume: {"bind": "/data"}},
        network_mode="host",
        remove=True,
    ).decode()


def _leftover_registry(client, run_id: str, images: dict[str, str], owner_pid: int):
    """What a killed attempt of ``run_id`` leaves: its cache registry and data, with a marker."""
    labels = {**lab.role_labels(run_id, "cache-registry"), OWNER_PID_LABEL: str(owner_pid)}
    name = f"{lab.NAME_PREFIX}-{run_id}-cache-registry"
    client.volumes.create(name=f"{name}-data", labels=labels)
    client.containers.run(
        images["base"],
        ["sh", "-c", "echo old > /data/stale"],
        volumes={f"{name}-data": {"bind": "/data"}},
        network_mode="host",
        remove=True,
    )
    return client.containers.run(
        images["registry"],
        name=name,
        detach=True,
        network_mode="host",
        environment={"REGISTRY_HTTP_ADDR": f"127.0.0.1:{lab.free_port()}"},
        volumes={f"{name}-data": {"bind": "/var/lib/registry", "mode": "rw"}},
        labels=labels,
        restart_policy={"Name": "unless-stopped"},
    )


def test_registry_takes_over_the_names_a_dead_attempt_of_its_run_left(
    docker_client, fixture_images
):
    # a stable run id (a shard, a resumed cell) meets its own crashed attempt's objects
    run_id = lab.new_run_id("t")
    old = _leftover_registry(docker_client, run_id, fixture_images, _dead_pid())
    assert "stale" in _volume_listing(docker_client, old.name + "-data", fixture_images["base"])
    with lab.Registry(docker_client, run_id, role="cache", image=fixture_images["registry"]) as reg:
        assert reg.container.id != old.id
        # the data volume is a fresh one, not the old one with its contents
        assert "stale" not in _volume_listing(
            docker_client, reg.volume.name, fixture_images["base"]
        )
    assert lab.leftovers(docker_client, run_id) == {"containers": [], "volumes": []}


def test_registry_never_takes_a_name_from_a_live_run(docker_client, fixture_images):
    run_id = lab.new_run_id("t")
    live = subprocess.Popen(["sleep", "60"])
    try:
        _leftover_registry(docker_client, run_id, fixture_images, live.pid)
        with (
            pytest.raises(InfraError, match="belongs to a live run"),
            lab.Registry(docker_client, run_id, role="cache", image=fixture_images["registry"]),
        ):
            pass
        assert lab.leftovers(docker_client, run_id)["containers"]
    finally:
        live.kill()
        live.wait()
        lab.sweep(docker_client, run_id)
    assert lab.leftovers(docker_client, run_id) == {"containers": [], "volumes": []}
