"""The container backend's Docker plumbing, for real, with a stand-in for buildctl-daemonless.sh.

CI has no ``moby/buildkit`` image, so a tiny busybox image whose
``buildctl-daemonless.sh`` is a shell script stands in for it. It proves what the
lab does around BuildKit — staging the context and config through the archive
API, the state volume and its resets, flags, logs, labels, copying the output
out, cleanup — and nothing about BuildKit itself (tests/test_buildkit.py does
that where real images exist).
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

from repro_lib import lab
from repro_lib.builders.container import ContainerBackend, buildkitd_config
from repro_lib.builders.container_flags import ROOTLESS_STATE
from repro_lib.fixtures import busybox_rootfs

from .conftest import CONTAINER_ARGS, run_cli

FAKE = "repro-lib-test/fake-buildkit:v0.0.0-rootless"
FAKE_ROOTFUL = "repro-lib-test/fake-buildkit:v0.0.0"

SCRIPT = rb"""#!/bin/sh
# Stand-in for buildctl-daemonless.sh: no BuildKit, only the plumbing the lab relies on.
set -e
echo "fake buildctl-daemonless: $*"
echo "BUILDKITD_FLAGS=$BUILDKITD_FLAGS"
test -f /tmp/repro-lib/config.toml
ctx=""; dest=""; cache=""
for a in "$@"; do
  case "$a" in
    context=*) ctx="${a#context=}" ;;
    type=tar,dest=*) dest="${a#type=tar,dest=}" ;;
    type=local,dest=*) cache="${a#type=local,dest=}"; cache="${cache%%,*}" ;;
  esac
done
case "$*" in *--export-cache*) if [ -f "$ctx/slow-export" ]; then sleep 120; fi ;; esac
case "$*" in *--import-cache*)
  if [ -f "$ctx/pull-base" ]; then
    # fetch the base image's manifest through the lab's mirror, as BuildKit does
    mirror=$(sed -n 's/^  mirrors = \["\(.*\)"\]$/\1/p' /tmp/repro-lib/config.toml)
    ref=$(cat "$ctx/pull-base")
    if ! wget -q -O /dev/null --header "Accept: application/vnd.docker.distribution.manifest.v2+json" \
        "http://$mirror/v2/${ref%:*}/manifests/${ref##*:}" 2>/tmp/pull.err; then
      echo "error: failed to solve: failed to resolve source metadata for docker.io/$ref: $(cat /tmp/pull.err)"
      exit 1
    fi
    echo "pulled $ref through $mirror"
  fi ;;
esac
state=/home/user/.local/share/buildkit
n=$(cat "$state/count" 2>/dev/null || echo 0); n=$((n+1)); echo "$n" > "$state/count"
echo "state count $n"
if [ -n "$cache" ]; then echo '{"fake": true}' > "$cache/index.json"; fi
mkdir -p /tmp/root/repro
cp "$ctx/repro.txt" /tmp/root/repro.txt
tar -cf "$dest" -C /tmp/root .
"""


def fake_rootfs(extra: dict[str, bytes] | None = None) -> bytes:
    """The stand-in's root file system, plus ``extra`` executables (path -> content)."""
    src = io.BytesIO(busybox_rootfs())
    out = io.BytesIO()
    with tarfile.open(fileobj=src) as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        for path in (
            "usr",
            "usr/bin",
            "home",
            "home/user",
            "home/user/.local",
            "home/user/.local/share",
            "home/user/.local/share/buildkit",
        ):
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            if path.startswith("home/user"):
                info.uid = info.gid = 1000
            tout.addfile(info)
        for path, content in {"usr/bin/buildctl-daemonless.sh": SCRIPT, **(extra or {})}.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o755
            tout.addfile(info, io.BytesIO(content))
    return out.getvalue()


@pytest.fixture(scope="module")
def fake_buildkit(docker_client, fixture_images):
    rootfs = fake_rootfs()
    for ref, user in ((FAKE, "1000:1000"), (FAKE_ROOTFUL, "")):
        repo, tag = ref.rsplit(":", 1)
        changes = ["ENV PATH=/usr/bin:/bin"] + ([f"USER {user}"] if user else [])
        docker_client.api.import_image_from_data(rootfs, repository=repo, tag=tag, changes=changes)
    yield FAKE
    for ref in (FAKE, FAKE_ROOTFUL):
        docker_client.images.remove(ref, force=True)


def test_buildkitd_config_mirrors_docker_io_and_allows_http():
    text = buildkitd_config("127.0.0.1:5001", ["127.0.0.1:5002"])
    assert '[registry."docker.io"]\n  mirrors = ["127.0.0.1:5001"]' in text
    for host in ("127.0.0.1:5001", "127.0.0.1:5002"):
        assert f'[registry."{host}"]\n  http = true\n  insecure = true' in text


def test_container_flags_for_rootless_and_rootful_images(docker_client, fake_buildkit, tmp_path):
    from repro_lib.builders import BatchEnv
    from repro_lib.scenario import load_scenario

    class _Reg:
        address = "127.0.0.1:1"

    env = BatchEnv(
        client=docker_client,
        run_id="t-flags",
        scenario=load_scenario(),
        cache_registry=_Reg(),
        mirror=None,
        work_dir=tmp_path,
    )
    rootless = ContainerBackend(FAKE)
    rootless.env = env
    rootless.state = lab.StateVolume(docker_client, "t-flags")
    rootless.state.volume = type("V", (), {"name": "vol"})()
    kw = rootless.container_kwargs(FAKE, ["build"], "buildkit", "n")
    assert kw["network_mode"] == "host"
    assert kw["entrypoint"] == ["buildctl-daemonless.sh"]
    assert kw["privileged"] is False
    assert kw["security_opt"] == ["seccomp=unconfined", "apparmor=unconfined"]
    assert kw["volumes"] == {"vol": {"bind": ROOTLESS_STATE, "mode": "rw"}}
    assert kw["environment"]["BUILDKITD_FLAGS"].startswith(
        "--oci-worker-no-process-sandbox --config "
    )
    assert kw["labels"]["repro-lib.run"] == "t-flags"

    rootful = ContainerBackend(FAKE_ROOTFUL)
    rootful.env, rootful.state = env, rootless.state
    kw = rootful.container_kwargs(FAKE_ROOTFUL, ["build"], "buildkit", "n")
    assert kw["privileged"] is True and kw["security_opt"] == []
    assert kw["volumes"] == {"vol": {"bind": "/var/lib/buildkit", "mode": "rw"}}
    assert "--oci-worker-no-process-sandbox" not in kw["environment"]["BUILDKITD_FLAGS"]

    # a host that cannot start privileged containers spells the flags out instead
    custom = ContainerBackend(FAKE_ROOTFUL, privileged=False, security_opt=["seccomp=unconfined"])
    custom.env, custom.state = env, rootless.state
    kw = custom.container_kwargs(FAKE_ROOTFUL, ["build"], "buildkit", "n")
    assert kw["privileged"] is False and kw["security_opt"] == ["seccomp=unconfined"]


@pytest.mark.parametrize("cache", ["registry", "local"])
def test_container_batch_plumbing_with_a_stand_in(docker_client, fake_buildkit, lab_home, cache):
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        FAKE,
        "--tries",
        "5",
        "--reset-freq",
        "2",
        "--cache",
        cache,
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["tries"] == 5 and summary["failures"] == 0 and summary["cache_type"] == cache
    logs = lab_home / "data/runs" / summary["run_id"] / "logs"
    export = (logs / "export.log").read_text()
    assert "--export-cache" in export and ("mode=max" in export)
    assert (
        "BUILDKITD_FLAGS=--oci-worker-no-process-sandbox --config /tmp/repro-lib/config.toml"
        in export
    )
    counts = []
    for trial in range(1, 6):
        text = (logs / f"trial-{trial:04d}.log").read_text()
        assert "--import-cache" in text
        counts.append(int(re.search(r"state count (\d+)", text).group(1)))
    # the state volume is fresh after every reset and kept within a cycle
    assert counts == [1, 2, 1, 2, 1]
    from repro_lib.store import Store

    with Store(lab_home / "data/raw/trials.sqlite") as store:
        records = store.trials(summary["run_id"])
    assert [r.privileged for r in records] == [
        False
    ] * 5  # rootless: never privileged, and recorded
    assert all(r.phases.get("container_start") is not None for r in records)
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    assert not list((lab_home / "data/runs").rglob("outputs/*.tar"))
    assert not list((lab_home / "data/runs").rglob("cache"))


def test_no_cleanup_keeps_labelled_objects_until_clean(docker_client, fake_buildkit, lab_home):
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        FAKE,
        "--tries",
        "2",
        "--no-cleanup",
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    kept = lab.leftovers(docker_client, summary["run_id"])
    assert len(kept["containers"]) >= 4  # two registries, the export and the tries
    buildkit = [c for c in kept["containers"] if "-l0-trial-" in c]
    attrs = docker_client.containers.get(buildkit[0]).attrs["HostConfig"]
    assert attrs["NetworkMode"] == "host" and not attrs["Privileged"]
    assert "seccomp=unconfined" in attrs["SecurityOpt"]
    assert summary["kept"]["cache_ref"].startswith("127.0.0.1:")
    done = run_cli("clean", home=lab_home)  # kept objects survive a plain clean ...
    assert lab.leftovers(docker_client, summary["run_id"])["containers"]
    done = run_cli("clean", "--run", summary["run_id"], home=lab_home)  # ... until named
    assert done.returncode == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_a_failing_buildkit_is_a_build_error_with_its_log(
    docker_client, fake_buildkit, lab_home, tmp_path
):
    scenario = tmp_path / "s"
    scenario.mkdir()
    (scenario / "Dockerfile").write_text("FROM scratch\n")
    (scenario / "expected.txt").write_text(
        "repro.txt\n"
    )  # no repro.txt in the context: the script fails
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        FAKE,
        "--scenario",
        str(scenario),
        "--tries",
        "2",
        home=lab_home,
    )
    assert proc.returncode == 2
    assert "buildctl exited 1" in proc.stderr and "log:" in proc.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_signals_during_the_cache_export(docker_client, fake_buildkit, lab_home, tmp_path, sig):
    import os
    import signal
    import subprocess
    import time

    from repro_lib.config import LAB_LABEL, ROLE_LABEL, lab_id

    from .conftest import repro_lib_cmd

    scenario = tmp_path / "slow"
    scenario.mkdir()
    (scenario / "Dockerfile").write_text("FROM scratch\nCOPY repro.txt /\n")
    (scenario / "expected.txt").write_text("repro.txt\n")
    (scenario / "repro.txt").write_text("x")
    (scenario / "slow-export").write_text("")
    proc = subprocess.Popen(
        repro_lib_cmd(
            "reproduce",
            *CONTAINER_ARGS,
            "--image",
            FAKE,
            "--scenario",
            str(scenario),
            "--tries",
            "3",
        ),
        cwd=lab_home,
        env=dict(os.environ, REPRO_LIB_HOME=str(lab_home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    flt = {"label": [f"{ROLE_LABEL}=buildkit", f"{LAB_LABEL}={lab_id()}"], "status": "running"}
    deadline = time.monotonic() + 60
    while not [c for c in docker_client.containers.list(filters=flt) if c.name.endswith("-export")]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    if sig == "SIGKILL":
        assert lab.leftovers(docker_client)["containers"]  # a crash leaves things behind ...
        assert run_cli("clean", home=lab_home).returncode == 0  # ... that clean removes
    else:
        assert proc.returncode == 130, err
        assert time.monotonic() - started < 30  # it did not wait for the 120 s export
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    assert not list((lab_home / "data/runs").rglob("ctx"))


def test_weak_isolation_flags_reach_the_container_and_the_record(
    docker_client, fake_buildkit, lab_home
):
    cgroup_v1 = str(docker_client.info().get("CgroupVersion") or "1") == "1"
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        FAKE_ROOTFUL,
        "--rootful-weak-isolation",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "MKNOD",
        "--tries",
        "2",
        "--no-cleanup",
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        kept = lab.leftovers(docker_client, summary["run_id"])
        trial = next(c for c in kept["containers"] if c.endswith("-l0-trial-0002"))
        host = docker_client.containers.get(trial).attrs["HostConfig"]
        assert host["Privileged"] is False
        assert host["CapAdd"] == ["ALL", "NET_ADMIN"]
        assert host["CapDrop"] == ["SYS_RESOURCE", "MKNOD"]
        assert set(host["SecurityOpt"]) == {"seccomp=unconfined", "apparmor=unconfined"}
        # systempaths=unconfined is the docker CLI's name for unmasking /proc and /sys paths
        assert host["MaskedPaths"] == [] and host["ReadonlyPaths"] == []
        binds = host.get("Binds") or []
        assert ("/sys/fs/cgroup:/sys/fs/cgroup:rw" in binds) == cgroup_v1, binds
        assert any(b.endswith(":/var/lib/buildkit:rw") for b in binds)  # rootful state path
        from repro_lib.store import Store

        with Store(lab_home / "data/raw/trials.sqlite") as store:
            records = store.trials(summary["run_id"])
        assert [r.outcome.value for r in records] == ["ok", "ok"]
        assert not records[0].privileged
        assert records[0].security == {
            "privileged": False,
            "cap_add": ["ALL", "NET_ADMIN"],
            "cap_drop": ["SYS_RESOURCE", "MKNOD"],
            "security_opt": ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"],
            "mounts": ["/sys/fs/cgroup:/sys/fs/cgroup:rw"] if cgroup_v1 else [],
            "weak_isolation": True,
        }
        # the choice travels with the run, so a report's command line repeats it
        with Store(lab_home / "data/raw/trials.sqlite") as store:
            assert "--rootful-weak-isolation" in store.run(summary["run_id"])["params"]["command"]
    finally:
        assert run_cli("clean", "--run", summary["run_id"], home=lab_home).returncode == 0
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_rootless_images_record_the_public_script_flags(docker_client, fake_buildkit, lab_home):
    proc = run_cli(
        "reproduce", *CONTAINER_ARGS, "--image", FAKE, "--tries", "1", "--json", home=lab_home
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    from repro_lib.store import Store

    with Store(lab_home / "data/raw/trials.sqlite") as store:
        (record,) = store.trials(summary["run_id"])
    assert record.security == {
        "privileged": False,
        "cap_add": [],
        "cap_drop": [],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "mounts": [],
        "weak_isolation": False,
    }


def test_weak_isolation_refuses_a_rootless_image(docker_client, fake_buildkit, lab_home):
    proc = run_cli(
        "reproduce",
        *CONTAINER_ARGS,
        "--image",
        FAKE,
        "--rootful-weak-isolation",
        "--tries",
        "1",
        home=lab_home,
    )
    assert proc.returncode == 2, proc.stderr
    assert "is for rootful BuildKit images" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def _privileged_refusal(docker_client) -> str:
    """The engine's own error for a --privileged container, or skip where it allows them."""
    import docker.errors

    from repro_lib.fixtures import BASE_FIXTURE

    container = docker_client.containers.create(
        BASE_FIXTURE,
        ["true"],
        privileged=True,
        network_mode="host",
        labels=lab.labels("t-privileged-probe"),
    )
    try:
        container.start()
    except docker.errors.APIError as exc:
        return lab.describe_docker_error(exc)
    finally:
        container.remove(force=True)
    pytest.skip("this engine starts --privileged containers, so it cannot show the refusal")


def test_the_engines_privileged_refusal_is_recognised(docker_client, fixture_images):
    from repro_lib.builders.container import refusal
    from repro_lib.errors import PrivilegesRefused

    text = _privileged_refusal(docker_client)
    found = refusal(text, {"privileged": True, "image": FAKE_ROOTFUL}, "repro-lib reproduce -x")
    assert isinstance(found, PrivilegesRefused), text
    assert "refuses --privileged" in str(found)
    assert "repro-lib reproduce -x --rootful-weak-isolation" in found.hint
    assert "that option weakens isolation" in found.hint


def test_a_refused_privileged_batch_stops_at_once_with_a_command_that_works(
    docker_client, fake_buildkit, lab_home
):
    _privileged_refusal(docker_client)
    proc = run_cli(
        "reproduce", *CONTAINER_ARGS, "--image", FAKE_ROOTFUL, "--tries", "8", home=lab_home
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]  # no bar
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "refuses --privileged" in lines[0] and "unable to apply caps" in lines[0]
    assert f"--image {FAKE_ROOTFUL} --tries 8 --rootful-weak-isolation" in lines[0]
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    # the printed command is one that works on this engine
    command = lines[0].split("run instead: ", 1)[1].split(" — ")[0]
    words = __import__("shlex").split(command)
    assert words[:2] == ["repro-lib", "reproduce"]
    ok = run_cli(*words[1:], "--tries", "1", home=lab_home)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


@pytest.mark.parametrize(
    "log",
    [
        "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: permission denied",
        "[rootlesskit:parent] error: failed to start the child: fork/exec /proc/self/exe: operation not permitted",
    ],
)
def test_restricted_user_namespaces_are_explained(log):
    from repro_lib.builders.container import refusal

    found = refusal(f"+ rootlesskit buildkitd\n{log}\n", {"privileged": False})
    assert found is not None
    assert "user namespace" in str(found) and "/proc/self/exe" in str(found)
    assert "apparmor_restrict_unprivileged_userns=1" in str(found)
    assert "apparmor_restrict_unprivileged_userns=0" in found.hint
    assert "AppArmor profile" in found.hint and "--rootful-weak-isolation" in found.hint


def test_capabilities_the_host_lacks_are_explained_and_other_errors_are_not():
    from repro_lib.builders.container import refusal

    text = "runc create failed: unable to start container process: unable to apply caps: operation not permitted"
    found = refusal(text, {"privileged": False, "cap_add": ["ALL"], "cap_drop": []})
    assert found is not None and "--cap-drop" in found.hint
    assert refusal("error: failed to solve: not found", {"privileged": True}) is None
    assert refusal("open /x: permission denied", {"privileged": False}) is None
    # a RUN step denied something in a rootless build: not the user-namespace refusal
    log = "+ exec rootlesskit buildkitd\n#6 0.2 cat: /root/x: Permission denied\nerror: failed to solve"
    assert refusal(log, {"privileged": False}) is None


def _get(url: str, accept: str = "") -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except urllib.error.URLError:
        return 0, b""


MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _wait_for_blobs(registry, digests, timeout: float = 30) -> None:
    import time

    import docker.errors

    root = "/var/lib/registry/docker/registry/v2/blobs/sha256"
    deadline = time.monotonic() + timeout
    for digest in digests:
        hex_ = digest.split(":", 1)[1]
        while True:
            try:
                registry.get_archive(f"{root}/{hex_[:2]}/{hex_}/data")
                break
            except docker.errors.NotFound:
                assert time.monotonic() < deadline, f"the mirror never stored {digest}"
                time.sleep(0.1)


def test_online_path_through_a_stand_in_for_docker_hub(docker_client, fake_buildkit, lab_home):
    """A local registry stands in for Docker Hub, which cannot be reached here.

    An engine started with ``--registry-mirror`` at the stand-in pulls the BuildKit
    (and registry) images from it; the lab's mirror proxies it (``--hub-url``) and
    keeps serving what it already fetched after the stand-in is gone.
    """
    import uuid

    from repro_lib import dockerd
    from repro_lib.config import Paths
    from repro_lib.fixtures import BASE_FIXTURE, REGISTRY_FIXTURE

    image = "moby/buildkit:v0.0.0-rootless"  # the stand-in BuildKit under a Hub name
    paths, name = Paths.from_env(), f"hub{uuid.uuid4().hex[:6]}"
    hub = lab.Registry(docker_client, lab.new_run_id("t"), role="hub", image=REGISTRY_FIXTURE)
    with hub:
        for local, remote in (
            (FAKE, image),
            (REGISTRY_FIXTURE, REGISTRY_FIXTURE),
            (BASE_FIXTURE, "library/alpine:latest"),
        ):
            lab.push_image(docker_client, local, f"{hub.address}/{remote}")
        engine = dockerd.start(paths, name, registry_mirrors=(hub.url,))
        run_id = None
        try:
            mirrored = lab.connect(engine.host)
            mirrored.images.pull(*REGISTRY_FIXTURE.split(":"))  # docker.io/... via the stand-in
            proc = run_cli(
                "reproduce",
                "--image",
                image,
                "--hub-url",
                hub.url,
                "--registry-image",
                REGISTRY_FIXTURE,
                "--tries",
                "2",
                "--no-cleanup",
                "--json",
                home=lab_home,
                env={"DOCKER_HOST": engine.host},
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            run_id, mirror = summary["run_id"], summary["kept"]["mirror"]
            assert summary["tries"] == 2 and summary["failures"] == 0
            # the lab's mirror proxies the stand-in: the base image comes through it
            alpine = f"http://{mirror}/v2/library/alpine"
            status, body = _get(f"{alpine}/manifests/latest", MANIFEST_V2)
            assert status == 200, status
            blobs = [json.loads(body)["config"]["digest"]]
            blobs += [layer["digest"] for layer in json.loads(body)["layers"]]
            assert all(_get(f"{alpine}/blobs/{d}")[0] == 200 for d in blobs)
            logs = hub.container.logs().decode(errors="replace")
            assert "/v2/moby/buildkit/manifests/v0.0.0-rootless" in logs  # the engine's pull
            assert "/v2/library/alpine/manifests/latest" in logs  # the mirror's fetch
            # the proxy stores what it streamed in the background: wait until it holds it
            registry = mirrored.containers.get(f"{lab.NAME_PREFIX}-{run_id}-mirror-registry")
            _wait_for_blobs(registry, blobs)
            # the upstream disappears: what the mirror holds still comes, a cold miss fails
            hub.stop()
            assert _get(f"{alpine}/manifests/latest", MANIFEST_V2)[0] == 200
            assert all(_get(f"{alpine}/blobs/{d}")[0] == 200 for d in blobs)
            assert _get(f"http://{mirror}/v2/library/busybox/manifests/1", MANIFEST_V2)[0] != 200
        finally:
            if run_id:
                run_cli("clean", "--run", run_id, home=lab_home, env={"DOCKER_HOST": engine.host})
                assert lab.leftovers(lab.connect(engine.host)) == {"containers": [], "volumes": []}
            dockerd.stop(paths, name)
            dockerd.remove_data(paths, name)
            assert not (dockerd.RUN_ROOT / name).exists()  # nothing of the engine is left
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


@pytest.mark.parametrize(
    "line",
    [
        "error: failed to solve: failed to resolve source metadata for docker.io/library/alpine:latest:"
        ' failed to do request: Head "http://127.0.0.1:5001/v2/library/alpine/manifests/latest?ns=docker.io":'
        " dial tcp 127.0.0.1:5001: connect: connection refused",
        "error: failed to solve: failed to copy: httpReadSeeker: failed open: unexpected status code"
        " http://127.0.0.1:5001/v2/library/alpine/blobs/sha256:abc?ns=docker.io: 404 Not Found",
        "error: failed to solve: alpine:latest: not found",
    ],
)
def test_a_base_image_the_mirror_cannot_give_is_infra_trouble(line):
    from repro_lib.builders import base_pull_error

    assert base_pull_error(f"#1 [internal] load metadata\n{line}\n", ["alpine:latest"])


def test_other_build_failures_are_not_pull_errors():
    from repro_lib.builders import base_pull_error

    log = (
        "#6 [3/3] COPY repro.txt /\nerror: failed to solve: failed to compute cache key: not found"
    )
    assert base_pull_error(log, ["alpine:latest"]) is None
    assert base_pull_error("error: alpine:latest: not found", ["busybox:1"]) is None


def _pulling_scenario(path, base: str):
    """The reference scenario whose stand-in BuildKit pulls ``base`` through the mirror."""
    path.mkdir()
    (path / "Dockerfile").write_text(f"FROM {base}\nCOPY repro.txt /\n")
    (path / "expected.txt").write_text("repro.txt\n")
    (path / "repro.txt").write_text("x")
    name, tag = base.rsplit(":", 1)
    (path / "pull-base").write_text(f"library/{name}:{tag}")
    return str(path)


def test_upstream_gone_mid_batch(docker_client, fake_buildkit, lab_home, tmp_path):
    """What the mirror already fetched keeps a batch going after its upstream is gone;
    a base image it never fetched is an infra error, never a missing layer."""
    import os
    import subprocess
    import time
    from datetime import datetime, timezone

    from repro_lib.fixtures import BASE_FIXTURE, REGISTRY_FIXTURE
    from repro_lib.store import Store

    from .conftest import repro_lib_cmd

    store = lab_home / "data/raw/trials.sqlite"
    hub = lab.Registry(docker_client, lab.new_run_id("t"), role="hub", image=REGISTRY_FIXTURE)
    with hub:
        lab.push_image(docker_client, BASE_FIXTURE, f"{hub.address}/library/alpine:latest")
        args = ["--image", FAKE, "--hub-url", hub.url, "--registry-image", REGISTRY_FIXTURE]
        batch = subprocess.Popen(
            repro_lib_cmd(
                "reproduce",
                *args,
                "--scenario",
                _pulling_scenario(tmp_path / "warm", "alpine:latest"),
                "--tries",
                "12",
                "--reset-freq",
                "2",
                "--json",
            ),
            cwd=lab_home,
            env=dict(os.environ, REPRO_LIB_HOME=str(lab_home)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not store.exists() or len(Store(store).dataframe()) < 2:
            assert batch.poll() is None, batch.communicate()
            assert time.monotonic() < deadline, "no try recorded"
            time.sleep(0.05)
        hub.stop()
        gone = datetime.now(timezone.utc).isoformat()
        out, err = batch.communicate(timeout=300)
    assert batch.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    with Store(store) as st:
        records = st.trials(summary["run_id"])
    assert [r.outcome.value for r in records] == ["ok"] * 12
    assert [r for r in records if r.started_at > gone], "the batch ended before the stand-in"
    # a fresh batch (and mirror) whose base image was never fetched: its upstream goes
    # away once the cache is exported (before or after the first try's pull, both
    # are cold misses: the stand-in never had the image)
    hub = lab.Registry(docker_client, lab.new_run_id("t"), role="hub", image=REGISTRY_FIXTURE)
    with hub:
        args = ["--image", FAKE, "--hub-url", hub.url, "--registry-image", REGISTRY_FIXTURE]
        runs = lab_home / "data/runs"
        exports_before = set(runs.glob("*/logs/export.log"))
        batch = subprocess.Popen(
            repro_lib_cmd(
                "reproduce",
                *args,
                "--scenario",
                _pulling_scenario(tmp_path / "cold", "cold:1"),
                "--tries",
                "5",
            ),
            cwd=lab_home,
            env=dict(os.environ, REPRO_LIB_HOME=str(lab_home)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not set(runs.glob("*/logs/export.log")) - exports_before:
            assert batch.poll() is None, batch.communicate()
            assert time.monotonic() < deadline, "the cache was never exported"
            time.sleep(0.05)
        hub.stop()
        out, err = batch.communicate(timeout=300)
    assert batch.returncode == 2, err[-3000:]
    assert "3 infrastructure errors in a row" in err
    with Store(store) as st:
        df = st.dataframe()
    cold = df[df["run_id"] != summary["run_id"]]
    assert list(cold["outcome"]) == ["infra_error"] * 3
    assert cold["detail"].str.contains("could not be pulled through the mirror").all()
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_an_unreachable_hub_at_the_start_is_one_line_exit_2(docker_client, fake_buildkit, lab_home):
    import socket
    import time

    from repro_lib.fixtures import REGISTRY_FIXTURE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    proc = run_cli(
        "reproduce",
        *("--image", FAKE, "--hub-url", dead, "--registry-image", REGISTRY_FIXTURE),
        home=lab_home,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and f"cannot reach its upstream {dead}" in lines[0], proc.stderr
    assert "--offline" in lines[0]
    assert time.monotonic() - started < 60  # not three 30 s readiness timeouts
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
