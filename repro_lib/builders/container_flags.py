"""What a BuildKit container is given, and how an engine's refusal of it reads.

A rootless image runs as the public script runs it (seccomp and AppArmor
unconfined, no process sandbox); a rootful one runs ``--privileged``, or with
``--rootful-weak-isolation`` where the engine refuses that. These functions turn
a backend's options and an image into the ``containers.create`` arguments, and
recognise the engine errors and BuildKit logs that mean the host refused them.
They hold no state: :class:`~repro_lib.builders.container.ContainerBackend`
runs the containers.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from ..errors import PrivilegesRefused

ROOTLESS_STATE = "/home/user/.local/share/buildkit"
ROOTLESS_SOCKET = "unix:///run/user/1000/buildkit/buildkitd.sock"
ROOTFUL_SOCKET = "unix:///run/buildkit/buildkitd.sock"
ROOTFUL_STATE = "/var/lib/buildkit"
ROOTLESS_SECURITY = ("seccomp=unconfined", "apparmor=unconfined")
# Rootful BuildKit where --privileged is refused (DESIGN.md: a VM whose bounding set
# lacks CAP_SYS_RESOURCE). Every piece lowers the container's isolation from its host.
WEAK_CAP_ADD = ("ALL",)
WEAK_CAP_DROP = ("SYS_RESOURCE",)
WEAK_SECURITY = ("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined")
CGROUP_ROOT = "/sys/fs/cgroup"  # RUN steps on cgroup v1 need it writable; a remount inside fails
WEAK_OPTION = "--rootful-weak-isolation"


def security_profile(
    image: str,
    attrs: dict[str, Any],
    *,
    privileged: bool | None,
    security_opt: list[str] | None,
    cap_add: list[str],
    cap_drop: list[str],
    weak_isolation: bool,
    buildkitd_flags: str,
    config_path: str,
    cgroup_version: Callable[[], str],
) -> dict[str, Any]:
    """Path of the state volume and the security flags for one image.

    ``privileged``/``security_opt`` None mean the defaults for the image's kind;
    ``cgroup_version`` is asked only when weak isolation needs the cgroup mount.
    """
    rootless = is_rootless(image, attrs)
    weak = weak_isolation and not rootless
    privileged = (not rootless and not weak) if privileged is None else privileged
    cap_add, cap_drop, mounts = list(cap_add), list(cap_drop), []
    if weak:
        cap_add = [*WEAK_CAP_ADD, *cap_add]
        cap_drop = [*WEAK_CAP_DROP, *cap_drop]
        if cgroup_version() == "1":
            mounts = [f"{CGROUP_ROOT}:{CGROUP_ROOT}:rw"]
    if security_opt is not None:
        security = list(security_opt)
    elif weak:
        security = list(WEAK_SECURITY)
    else:
        security = [] if privileged else list(ROOTLESS_SECURITY)
    flags = "--oci-worker-no-process-sandbox " if rootless else ""
    flags += f"--config {config_path} {buildkitd_flags}".strip()
    return {
        "rootless": rootless,
        "state_path": ROOTLESS_STATE if rootless else ROOTFUL_STATE,
        "privileged": privileged,
        "security_opt": security,
        "cap_add": list(dict.fromkeys(cap_add)),
        "cap_drop": list(dict.fromkeys(cap_drop)),
        "mounts": mounts,
        "weak_isolation": weak,
        "buildkitd_flags": flags.strip(),
    }


def create_kwargs(
    image: str,
    command: list[str],
    *,
    name: str,
    role: str,
    profile: dict[str, Any],
    state_volume: str,
    labels: dict[str, str],
    daemon_addr: str = "",
) -> dict[str, Any]:
    """Everything ``containers.create`` gets for one BuildKit container of ``profile``."""
    volumes = {state_volume: {"bind": profile["state_path"], "mode": "rw"}}
    for mount in profile["mounts"]:
        host, inside, mode = mount.split(":")
        volumes[host] = {"bind": inside, "mode": mode}
    kwargs: dict[str, Any] = {
        "image": image,
        "command": command,
        "name": name,
        "environment": {"BUILDKITD_FLAGS": profile["buildkitd_flags"]},
        "network_mode": "host",
        "volumes": volumes,
        "labels": labels,
        "security_opt": profile["security_opt"],
        "privileged": profile["privileged"],
    }
    if profile["cap_add"]:
        kwargs["cap_add"] = profile["cap_add"]
    if profile["cap_drop"]:
        kwargs["cap_drop"] = profile["cap_drop"]
    if role == "buildkit-daemon":
        kwargs["entrypoint"] = (["rootlesskit"] if profile["rootless"] else []) + ["buildkitd"]
        kwargs["command"] = shlex.split(profile["buildkitd_flags"])
        if daemon_addr:
            # the image's own socket for `docker exec`, and loopback TCP for the host's buildctl
            own = ROOTLESS_SOCKET if profile["rootless"] else ROOTFUL_SOCKET
            kwargs["command"] += ["--addr", own, "--addr", daemon_addr]
    else:
        kwargs["entrypoint"] = ["buildctl-daemonless.sh"]
    return kwargs


def is_rootless(image: str, attrs: dict[str, Any] | None = None) -> bool:
    user = ((attrs or {}).get("Config") or {}).get("User") or ""
    return image.split("@")[0].endswith("-rootless") or user not in ("", "root", "0", "0:0")


def refusal(text: str, kwargs: dict[str, Any], command: str = "") -> PrivilegesRefused | None:
    """A refusal of the container's privileges in an engine error or a BuildKit log, explained.

    Such a host fails every try the same way, so the batch must stop with the way
    out instead of piling up infra or build errors that say nothing about BuildKit.
    """
    low = text.lower()
    if "unable to apply caps" in low:
        line = _line_with(text, "unable to apply caps")
        if kwargs.get("privileged"):
            return PrivilegesRefused(
                f"this engine refuses --privileged containers ({line}); its host lacks"
                " capabilities a privileged container gets",
                hint=f"run instead: {_weak_command(command, kwargs.get('image', ''))}"
                " — that option weakens isolation; or use a -rootless image",
            )
        return PrivilegesRefused(
            f"this engine refuses the capabilities asked for (cap_add={kwargs.get('cap_add', [])},"
            f" cap_drop={kwargs.get('cap_drop', [])}): {line}",
            hint="add --cap-drop NAME for each capability the engine's host lacks"
            " (e.g. SYS_RESOURCE in nested containers), or use a -rootless image",
        )
    # rootlesskit's own line, e.g. "[rootlesskit:parent] error: failed to start the child:
    # fork/exec /proc/self/exe: permission denied"; a build step's denial is not one
    line = next(
        (
            " ".join(ln.split())[:300]
            for ln in text.splitlines()
            if ("/proc/self/exe" in ln or "rootlesskit" in ln)
            and ("permission denied" in ln.lower() or "operation not permitted" in ln.lower())
        ),
        "",
    )
    if line:
        return PrivilegesRefused(
            f"rootless BuildKit cannot create its user namespace ({line}); hosts such as"
            " Ubuntu 24.04 restrict unprivileged user namespaces through AppArmor"
            " (kernel.apparmor_restrict_unprivileged_userns=1)",
            hint="on the engine's host run `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`,"
            " or load an AppArmor profile that allows userns for the container, or use a rootful"
            f" image with {WEAK_OPTION} (weakens isolation)",
        )
    return None


def _line_with(text: str, needle: str) -> str:
    for line in text.splitlines():
        if needle.lower() in line.lower():
            return " ".join(line.split())[:300]
    return ""


def _weak_command(command: str, image: str) -> str:
    """The batch's own command line with ``--privileged`` swapped for the named option."""
    words = shlex.split(command) if command.startswith("repro-lib ") else []
    if not words:
        words = ["repro-lib", "reproduce", "--image", image or "IMAGE"]
    words = [w for w in words if w not in ("--privileged", WEAK_OPTION)] + [WEAK_OPTION]
    return shlex.join(words)
