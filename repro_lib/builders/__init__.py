"""How one build runs. A backend knows three things: export the cache, reset
its state, and build with the cache imported into a tarball.

Backends register themselves in :data:`BACKENDS` by name; the trial loop only
knows the :class:`Backend` protocol, so a new backend is one new module that
imports :mod:`repro_lib.builders.base` (see docs/architecture.md).
"""

from . import container, engine  # noqa: F401  (importing a backend registers it)
from .base import (
    BACKENDS,
    FEATURES,
    Backend,
    BatchEnv,
    BuildOutput,
    backend_class,
    base_pull_error,
    cache_import_error,
    count_cache_hits,
    count_cache_pulls,
    load_plugins,
    log_tail,
    register,
    step_times,
    supports,
    version_of_image,
    write_log,
)

__all__ = [
    "BACKENDS",
    "FEATURES",
    "Backend",
    "BatchEnv",
    "BuildOutput",
    "backend_class",
    "base_pull_error",
    "cache_import_error",
    "count_cache_hits",
    "count_cache_pulls",
    "load_plugins",
    "log_tail",
    "register",
    "step_times",
    "supports",
    "version_of_image",
    "write_log",
]
