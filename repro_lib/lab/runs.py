"""Which run owns a lab object: run ids, the labels every object carries, the owner's liveness.

Every object the lab creates carries ``repro-lib.run=<run id>`` plus the pid and
host of the process that owns it, so cleanup is a label query and a new run can
reap what dead runs left without touching what a live run owns.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from ..config import (
    KEEP_LABEL,
    LAB_LABEL,
    LABEL_PREFIX,
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    lab_id,
)
from ..errors import UsageError


def new_run_id(prefix: str = "r") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def labels(run_id: str, *, keep: bool = False, **extra: str) -> dict[str, str]:
    """Labels for one lab object: the run, its owner process and the caller's extras.

    Raises:
        UsageError: a caller label uses the reserved ``repro-lib.`` namespace.
    """
    for key in extra:
        if key.startswith(LABEL_PREFIX):
            raise UsageError(f"label {key!r} is reserved for the lab")
    out = {
        RUN_LABEL: run_id,
        LAB_LABEL: lab_id(),
        OWNER_PID_LABEL: str(os.getpid()),
        OWNER_HOST_LABEL: socket.gethostname(),
    }
    if keep:
        out[KEEP_LABEL] = "true"
    out.update(extra)
    return out


def role_labels(run_id: str, role: str, *, keep: bool = False) -> dict[str, str]:
    out = labels(run_id, keep=keep)
    out[ROLE_LABEL] = role
    return out


def label_filter(run_id: str | None = None) -> dict[str, list[str]]:
    """Docker filters for this lab's objects (of one run, or of all its runs)."""
    return {"label": [f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL, f"{LAB_LABEL}={lab_id()}"]}


def owner_alive(obj_labels: dict[str, str]) -> bool:
    if obj_labels.get(OWNER_HOST_LABEL) != socket.gethostname():
        return False
    try:
        pid = int(obj_labels.get(OWNER_PID_LABEL, ""))
    except ValueError:
        return False
    return pid == os.getpid() or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host_name() -> str:
    """How records name this Docker host: ``$REPRO_LIB_HOST``, else the machine's hostname.

    Several stand-in hosts on one machine (tests, one engine per worker) need the
    variable to tell their records apart.
    """
    return os.environ.get("REPRO_LIB_HOST") or socket.gethostname()
