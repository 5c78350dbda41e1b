"""Lab resources on a Docker engine, one question per module.

- ``runs``: which run owns an object (run ids, labels, the owner's liveness);
- ``net``: ports on 127.0.0.1 and readiness waits;
- ``engine``: the engine connection, its host facts, container creation;
- ``registry``: a labelled ``registry:2`` container;
- ``images``: ensure, push, seed the mirror, Docker Hub paths;
- ``state``: BuildKit state volumes;
- ``removal``: removing volumes, and names a dead run left behind;
- ``archives``: tar archives in and out of containers;
- ``cleanup``: what ``clean`` removes.

Callers use the flat names (``lab.connect``, ``lab.Registry``); the label keys and
the lab's error classes are here too so a caller needs one import.
"""

from ..config import NAME_PREFIX, OWNER_HOST_LABEL, OWNER_PID_LABEL
from ..errors import InfraError, MissingRequirement, ReadinessTimeout, UsageError
from .archives import copy_out, tar_of
from .cleanup import SweepResult, leftovers, sweep
from .engine import (
    UNMASK_SYSTEM_PATHS,
    HostFacts,
    connect,
    container_kwargs_for_log,
    create_container,
    describe_docker_error,
    engine_host_of,
)
from .images import docker_hub_path, ensure_image, push_image, seed_mirror, split_tag
from .net import free_port, port_is_free, wait_until
from .registry import DEFAULT_REGISTRY_IMAGE, Registry
from .runs import (
    host_name,
    label_filter,
    labels,
    new_run_id,
    owner_alive,
    pid_alive,
    role_labels,
)
from .state import StateVolume

__all__ = [
    "DEFAULT_REGISTRY_IMAGE",
    "NAME_PREFIX",
    "OWNER_HOST_LABEL",
    "OWNER_PID_LABEL",
    "UNMASK_SYSTEM_PATHS",
    "HostFacts",
    "InfraError",
    "MissingRequirement",
    "ReadinessTimeout",
    "Registry",
    "StateVolume",
    "SweepResult",
    "UsageError",
    "connect",
    "container_kwargs_for_log",
    "copy_out",
    "create_container",
    "describe_docker_error",
    "docker_hub_path",
    "engine_host_of",
    "ensure_image",
    "free_port",
    "host_name",
    "label_filter",
    "labels",
    "leftovers",
    "new_run_id",
    "owner_alive",
    "pid_alive",
    "port_is_free",
    "push_image",
    "role_labels",
    "seed_mirror",
    "split_tag",
    "sweep",
    "tar_of",
    "wait_until",
]
