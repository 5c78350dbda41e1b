"""``scripts/lab``'s set-up decisions, run for real with stub system commands on PATH.

The stubs (``dpkg``, ``apt-get``, ``apt-cache``, ``docker``, ``repro-lib``) stand
for machines the lab must not break: one with Docker CE, a fresh Debian 12 or 13,
one without apt. Each records its arguments, so the tests read exactly what apt
was asked. PATH holds only the stubs and the few real tools the script uses, so
this machine's own docker and apt are never seen.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lab"
TOOLS = (
    "dirname",
    "id",
    "grep",
    "sed",
    "tr",
    "cat",
    "mkdir",
    "seq",
    "sleep",
    "tail",
    "sort",
    "comm",
)

STUB = """#!/bin/bash
echo "{name} $*" >> "$STUB_LOG"
{body}
"""
BODIES = {
    "dpkg": """[ "$1" = -s ] || exit 1
for p in $STUB_INSTALLED; do
  if [ "$p" = "$2" ]; then printf 'Package: %s\\nStatus: install ok installed\\n' "$2"; exit 0; fi
done
exit 1""",
    "apt-cache": """for p in $STUB_APT_KNOWN; do [ "$p" = "$2" ] && exit 0; done
exit 100""",
    # a real install of docker.io leaves a dockerd behind, as the package does
    "apt-get": """case " $* " in
  *" -s "*) for p in $STUB_APT_REMOVES; do echo "Remv $p [1.0]"; done ;;
  *" install "*" docker.io "*) printf '#!/bin/bash\\necho "dockerd $*" >> "$STUB_LOG"\\necho up > "$HOME/engine-up"\\n' > "$(dirname "$0")/dockerd"
    /bin/chmod +x "$(dirname "$0")/dockerd" ;;
esac
exit 0""",
    # `docker info` answers when the engine is up, or through a current context
    # (then only without DOCKER_HOST, which overrides contexts)
    "docker": """[ "$1" = info ] && [ "${STUB_ENGINE_UP:-}" = 1 ] && exit 0
[ "$1" = info ] && [ -f "$HOME/engine-up" ] && exit 0
[ "$1" = info ] && [ -z "${DOCKER_HOST:-}" ] && [ -f "$HOME/.docker/current-context" ] && exit 0
# the engine's objects, none of them labelled: one id per line in $HOME/containers, $HOME/volumes
case " $* " in *" --filter label="*) exit 0 ;; esac
[ "$1 $2" = "ps -aq" ] && { cat "$HOME/containers" 2>/dev/null; exit 0; }
[ "$1 $2 $3" = "volume ls -q" ] && { cat "$HOME/volumes" 2>/dev/null; exit 0; }
exit 1""",
    # the test suite: leaves $STUB_SUITE_LEAVES (lines "containers ID" / "volumes ID")
    # on the engine and exits $STUB_SUITE_EXIT; everything else python does succeeds
    "python": """if [ "$1 $2" = "-m pytest" ]; then
  printf '%s\\n' "${STUB_SUITE_LEAVES:-}" | while read -r kind id; do
    [ -n "$id" ] && echo "$id" >> "$HOME/$kind"
  done
  exit "${STUB_SUITE_EXIT:-0}"
fi
exit 0""",
    "repro-lib": """[ "$1 $2" = "engine start" ] && echo "unix://$HOME/no-engine.sock"
exit 0""",
}
DOCKER_CE = "docker-ce docker-ce-cli containerd.io"
APT_KNOWS = "docker.io docker-registry busybox-static python3-venv python3-pip"


def run_lab(
    tmp_path,
    *args,
    installed="",
    apt_knows=APT_KNOWS,
    removes="",
    engine_up=False,
    extra_env=None,
    stubs=("dpkg", "apt-get", "apt-cache", "docker", "repro-lib"),
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in stubs:
        path = bin_dir / name
        path.write_text(STUB.format(name=name, body=BODIES[name]))
        path.chmod(0o755)
    for tool in TOOLS:
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    for python in ("python3", "python"):
        if not (bin_dir / python).exists():
            (bin_dir / python).symlink_to(sys.executable)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_INSTALLED": installed,
        "STUB_APT_KNOWN": apt_knows,
        "STUB_APT_REMOVES": removes,
        "STUB_ENGINE_UP": "1" if engine_up else "",
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        "REPRO_LIB_LAB_SKIP_VENV": "1",
        **(extra_env or {}),
    }
    env = {k: v for k, v in env.items() if v is not None}
    proc = subprocess.run(
        ["/bin/bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, log.read_text().splitlines()


def apt_installs(calls):
    """Packages of each real (not simulated) ``apt-get install``."""
    return [
        c.split()[2:] for c in calls if c.startswith("apt-get install") and " -s " not in f" {c} "
    ]


def apt_calls_naming(calls, *packages):
    return [c for c in calls if c.startswith("apt") and any(p in c.split() for p in packages)]


def test_a_machine_with_docker_ce_keeps_it_and_reproduce_uses_it(tmp_path):
    proc, calls = run_lab(
        tmp_path, "reproduce", "--tries", "3", installed=DOCKER_CE, engine_up=True
    )
    assert proc.returncode == 0, proc.stderr
    assert not apt_calls_naming(calls, "docker.io")  # apt never even hears of it
    assert "docker info" in calls
    assert calls[-1] == "repro-lib reproduce --tries 3"  # goes on with the existing engine
    assert not [c for c in calls if c.startswith("repro-lib engine")]
    # the missing Python packages are installed; the engine stays untouched
    assert apt_installs(calls) == [["-y", "-qq", "python3-venv", "python3-pip"]]


@pytest.mark.parametrize("has_cli", [True, False], ids=["docker-cli", "dockerd-only"])
def test_setup_never_asks_apt_for_docker_io_when_docker_is_there(tmp_path, has_cli):
    stubs = ("dpkg", "apt-get", "apt-cache", "repro-lib") + (("docker",) if has_cli else ())
    if not has_cli:
        (tmp_path / "bin").mkdir()
        dockerd = tmp_path / "bin" / "dockerd"
        dockerd.write_text("#!/bin/bash\nexit 0\n")
        dockerd.chmod(0o755)
    proc, calls = run_lab(
        tmp_path, "setup", installed=DOCKER_CE, apt_knows=APT_KNOWS + " docker-buildx", stubs=stubs
    )
    assert proc.returncode == 0, proc.stderr
    assert not apt_calls_naming(calls, "docker.io", "docker-buildx"), calls
    assert apt_installs(calls) == [["-y", "-qq", "python3-venv", "python3-pip"]]


@pytest.mark.parametrize(
    "apt_knows, expected",
    [
        (APT_KNOWS, ["python3-venv", "python3-pip", "docker.io"]),  # Debian 12
        (
            APT_KNOWS + " docker-buildx",
            ["python3-venv", "python3-pip", "docker.io", "docker-buildx"],
        ),
    ],
    ids=["debian-12", "debian-13"],
)
def test_a_machine_without_docker_gets_docker_io_and_no_fixtures(tmp_path, apt_knows, expected):
    proc, calls = run_lab(
        tmp_path, "setup", apt_knows=apt_knows, stubs=("dpkg", "apt-get", "apt-cache")
    )
    assert proc.returncode == 0, proc.stderr
    assert apt_installs(calls) == [["-y", "-qq", *expected]]
    # the simulation came first, with the same packages
    assert f"apt-get install -s -y {' '.join(expected)}" in calls


def test_docker_io_as_the_engine_gets_buildx_where_apt_has_it(tmp_path):
    proc, calls = run_lab(
        tmp_path,
        "setup",
        installed="docker.io python3-venv python3-pip",
        apt_knows=APT_KNOWS + " docker-buildx",
    )
    assert proc.returncode == 0, proc.stderr
    assert apt_installs(calls) == [["-y", "-qq", "docker-buildx"]]


def test_an_install_that_would_remove_a_package_is_refused(tmp_path):
    proc, calls = run_lab(
        tmp_path, "setup", installed=DOCKER_CE, removes="docker-ce containerd.io", engine_up=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "would remove docker-ce containerd.io" in lines[-1], proc.stderr
    assert apt_installs(calls) == []  # only the simulation ran


def test_without_apt_it_says_what_to_install_and_goes_on(tmp_path):
    proc, calls = run_lab(
        tmp_path, "reproduce", "--tries", "2", engine_up=True, stubs=("docker", "repro-lib")
    )
    assert proc.returncode == 0, proc.stderr
    assert "no apt here: install by hand" in proc.stderr and "python3-venv" in proc.stderr
    assert "docker.io" not in proc.stderr  # a docker CLI is there
    assert calls[-1] == "repro-lib reproduce --tries 2"


def test_a_docker_cli_without_an_engine_is_one_line_exit_2(tmp_path):
    proc, calls = run_lab(tmp_path, "reproduce", installed=DOCKER_CE + " python3-venv python3-pip")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine answers and there is no dockerd" in lines[0]
    assert not [c for c in calls if c.startswith(("apt-get", "repro-lib"))]


CLI_ONLY = "python3-venv python3-pip"  # a fresh machine: /usr/local/bin/docker, no engine


@pytest.mark.parametrize("command", ["setup", "reproduce", "test"])
def test_a_cli_only_machine_gets_an_engine(tmp_path, command):
    proc, calls = run_lab(tmp_path, command, installed=CLI_ONLY)
    assert apt_installs(calls) and "docker.io" in apt_installs(calls)[0], (calls, proc.stderr)
    simulated = [c for c in calls if c.startswith("apt-get install -s")]
    assert simulated and "docker.io" in simulated[0].split()  # simulated first
    if command == "setup":
        assert proc.returncode == 0, proc.stderr
    elif command == "reproduce":
        # the new engine is started as the lab's private one and the batch goes on
        assert "repro-lib engine start" in calls, (calls, proc.stderr)
        assert "no dockerd" not in proc.stderr
    else:
        # `test` starts its private dockerd from the package it just installed
        assert [c for c in calls if c.startswith("dockerd --host")], (calls, proc.stderr)


def test_a_cli_only_machine_where_apt_would_remove_the_cli_is_one_line_exit_2(tmp_path):
    proc, calls = run_lab(
        tmp_path, "reproduce", installed=CLI_ONLY + " docker-ce-cli", removes="docker-ce-cli"
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "would remove docker-ce-cli" in lines[-1], proc.stderr
    assert "docker-ce" in lines[-1] and "same repository as the CLI" in lines[-1]
    assert sum("error" in line for line in lines) == 1
    assert apt_installs(calls) == []  # only the simulation ran
    assert not [c for c in calls if c.startswith("repro-lib")]


def test_a_cli_whose_engine_answers_through_a_context_installs_nothing(tmp_path):
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "current-context").write_text("remote\n")
    proc, calls = run_lab(
        tmp_path, "reproduce", "--tries", "2", installed=CLI_ONLY, extra_env={"DOCKER_HOST": None}
    )
    assert proc.returncode == 0, proc.stderr
    assert apt_installs(calls) == []
    assert not apt_calls_naming(calls, "docker.io")
    assert calls[-1] == "repro-lib reproduce --tries 2"


class _StandInHub(http.server.BaseHTTPRequestHandler):
    """Answers ``/v2/`` as Docker Hub does to an anonymous client."""

    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(401 if self.path == "/v2/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_online_branch_uses_the_hub_that_answers(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub = f"http://127.0.0.1:{server.server_port}"
    try:
        proc, calls = run_lab(
            tmp_path,
            "reproduce",
            installed=DOCKER_CE + " python3-venv python3-pip",
            engine_up=True,
            extra_env={"REPRO_LIB_HUB_URL": hub},
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert "docker image inspect moby/buildkit:v0.9.0-rootless" in calls  # not here
    assert calls[-1] == f"repro-lib reproduce --hub-url {hub}"


def test_online_branch_without_a_hub_falls_back_to_the_engine_backend(tmp_path):
    hub = f"http://127.0.0.1:{_closed_port()}"
    proc, calls = run_lab(
        tmp_path,
        "reproduce",
        installed=DOCKER_CE + " python3-venv python3-pip",
        engine_up=True,
        extra_env={"REPRO_LIB_HUB_URL": hub},
    )
    assert f"{hub} is unreachable: running the engine backend" in proc.stderr
    assert "repro-lib engine start" in calls
    # no fixtures' packages and no local registry:2/alpine here: said in one line, exit 2
    assert proc.returncode == 2
    assert "offline runs need registry:2 and alpine:latest" in proc.stderr.splitlines()[-1]
    assert not [c for c in calls if c.startswith("repro-lib reproduce")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_test_installs_the_fixtures_packages(tmp_path):
    common = dict(installed=DOCKER_CE + " python3-venv python3-pip", engine_up=True)
    _, calls = run_lab(tmp_path, "reproduce", "--tries", "1", **common)
    assert apt_installs(calls) == []
    # `test` goes on to start its engine, which the stubbed PATH cannot; apt was asked first
    _, calls = run_lab(tmp_path, "test", **common)
    assert apt_installs(calls) == [["-y", "-qq", "docker-registry", "busybox-static"]]


def _suite_run(tmp_path, *, leaves="", suite_exit=0):
    """``scripts/lab test`` on an engine holding one container and one volume beforehand."""
    (tmp_path / "containers").write_text("c0ffee-before\n")
    (tmp_path / "volumes").write_text("repro-lib-someone-elses\n")
    return run_lab(
        tmp_path,
        "test",
        "-q",
        installed=DOCKER_CE + " python3-venv python3-pip docker-registry busybox-static",
        engine_up=True,
        stubs=("dpkg", "apt-get", "apt-cache", "docker", "repro-lib", "python"),
        extra_env={
            "STUB_SUITE_LEAVES": leaves,
            "STUB_SUITE_EXIT": str(suite_exit),
            "REPRO_LIB_TEST_ENGINE_DATA": str(tmp_path / "engine"),
        },
    )


def test_the_suite_passes_when_it_leaves_the_engine_as_it_found_it(tmp_path):
    proc, calls = _suite_run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "python -m pytest -q" in calls
    assert "left" not in proc.stderr


def test_an_unlabelled_volume_the_suite_left_fails_the_run(tmp_path):
    anonymous = "8f3a" * 16  # what an image's VOLUME gets: no name, no label
    proc, _ = _suite_run(tmp_path, leaves=f"volumes {anonymous}")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "left 0 containers and 1 volumes on the engine" in line, proc.stderr
    assert f"volume {anonymous}" in line
    assert "before" not in line and "someone-elses" not in line  # what was there stays out


def test_a_failing_suite_keeps_its_exit_code_and_is_still_checked_for_leaks(tmp_path):
    proc, _ = _suite_run(tmp_path, suite_exit=3)
    assert proc.returncode == 3, proc.stderr
    proc, _ = _suite_run(tmp_path, leaves="containers deadbeef", suite_exit=3)
    assert proc.returncode == 1, proc.stderr
    assert "left 1 containers and 0 volumes on the engine: container deadbeef" in proc.stderr
