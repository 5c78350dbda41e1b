"""A private Docker engine for the lab: its own data root, socket and label.

The engine backend prunes the builder cache at every reset; doing that to a
user's everyday engine would destroy their cache. An engine started here
carries the daemon label ``repro-lib.engine=<name>``, which the engine backend
checks before pruning. Host networking only: no bridge, no iptables.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import lab
from .config import ENGINE_LABEL, Paths
from .errors import InfraError, MissingRequirement, UsageError

RUN_ROOT = Path("/run/repro-lib")  # sockets need short paths (108 bytes at most)


@dataclass(frozen=True)
class PrivateEngine:
    name: str
    host: str
    pid: int
    data_root: str
    exec_root: str
    log: str
    owner_pid: int | None = None  # set for engines a sweep starts for its lanes
    owner_host: str = ""

    @property
    def state_file(self) -> Path:
        return Path(self.data_root).parent / "engine.json"

    def alive(self) -> bool:
        try:
            # When this process started the engine, an exited dockerd stays a zombie until reaped.
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _dirs(paths: Paths, name: str) -> tuple[Path, Path]:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"engine name {name!r} may use letters, digits, - and _ only")
    return paths.engines / name, RUN_ROOT / name


def load(paths: Paths, name: str) -> PrivateEngine | None:
    base, _ = _dirs(paths, name)
    try:
        return PrivateEngine(**json.loads((base / "engine.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def start(
    paths: Paths,
    name: str = "default",
    *,
    timeout: float = 60,
    dockerd: str = "dockerd",
    owned: bool = False,
    registry_mirrors: tuple[str, ...] = (),
) -> PrivateEngine:
    """Start (or find running) the private engine ``name``.

    ``registry_mirrors`` are the engine's Docker Hub mirrors (``--registry-mirror``),
    e.g. a local stand-in for Docker Hub where it cannot be reached.

    Raises:
        MissingRequirement: dockerd is not installed or we are not root.
        InfraError: dockerd did not answer before ``timeout``.
    """
    existing = load(paths, name)
    if existing and existing.alive():
        return existing
    binary = shutil.which(dockerd)
    if not binary:
        raise MissingRequirement("dockerd not found", hint="apt-get install docker.io")
    if os.geteuid() != 0:
        raise MissingRequirement("starting a private dockerd needs root", hint="run it with sudo")
    base, run = _dirs(paths, name)
    data_root, exec_root = base / "root", run / "exec"
    for d in (data_root, exec_root):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    host = f"unix://{run}/docker.sock"
    log_path = base / "dockerd.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            binary,
            "--host",
            host,
            "--data-root",
            str(data_root),
            "--exec-root",
            str(exec_root),
            "--pidfile",
            str(run / "docker.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip6tables=false" if _supports_ip6tables(binary) else "--ipv6=false",
            "--label",
            f"{ENGINE_LABEL}={name}",
            *(f"--registry-mirror={mirror}" for mirror in registry_mirrors),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives the command that started it
    )
    engine = PrivateEngine(
        name,
        host,
        proc.pid,
        str(data_root),
        str(exec_root),
        str(log_path),
        owner_pid=os.getpid() if owned else None,
        owner_host=socket.gethostname() if owned else "",
    )
    try:
        lab.wait_until(
            lambda: _answers(engine, proc),
            timeout=timeout,
            interval=0.2,
            what=f"private dockerd {name}",
            transient=(MissingRequirement,),
            logs=lambda: log_path.read_text(errors="replace")[-2000:],
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        raise
    (base / "engine.json").write_text(json.dumps(asdict(engine)))
    return engine


def _supports_ip6tables(binary: str) -> bool:
    out = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    return "--ip6tables" in out


def _answers(engine: PrivateEngine, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise InfraError(f"dockerd exited with {proc.returncode}; see {engine.log}")
    client = lab.connect(engine.host, timeout=5)
    client.close()
    return True


def stop(paths: Paths, name: str = "default", *, timeout: float = 30) -> bool:
    """Stop the private engine ``name``; returns whether one was running."""
    engine = load(paths, name)
    if engine is None or not engine.alive():
        return False
    os.kill(engine.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while engine.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if engine.alive():
        os.kill(engine.pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        engine.state_file.unlink()
    return True


def remove_data(paths: Paths, name: str) -> None:
    """Delete a stopped private engine's data root and run directory."""
    engine = load(paths, name)
    if engine is not None and engine.alive():
        raise InfraError(f"private engine {name} is still running")
    base, run = _dirs(paths, name)
    # dockerd leaves its default network namespace bind-mounted; a mount point cannot go
    netns = run / "exec" / "netns" / "default"
    if os.path.ismount(netns):
        subprocess.run(["umount", str(netns)], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)


def reap_orphans(paths: Paths) -> list[str]:
    """Stop and delete lane engines whose sweep process is gone; user-started ones stay."""
    reaped = []
    if not paths.engines.is_dir():
        return reaped
    for state in paths.engines.glob("*/engine.json"):
        engine = load(paths, state.parent.name)
        if engine is None or engine.owner_pid is None:
            continue
        owner = {
            lab.OWNER_PID_LABEL: str(engine.owner_pid),
            lab.OWNER_HOST_LABEL: engine.owner_host,
        }
        if lab.owner_alive(owner):
            continue
        stop(paths, engine.name)
        remove_data(paths, engine.name)
        reaped.append(engine.name)
    return reaped
