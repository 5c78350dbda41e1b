"""Every path the lab uses, derived from one project root.

``REPRO_LIB_HOME`` overrides the root (tests point it at a temporary
directory); otherwise the current working directory is the project root, so
``data/`` lands next to where the user runs ``repro-lib``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SCENARIOS_DIR = PACKAGE_DIR / "scenarios"

LABEL_PREFIX = "repro-lib."
RUN_LABEL = "repro-lib.run"
OWNER_PID_LABEL = "repro-lib.owner-pid"
OWNER_HOST_LABEL = "repro-lib.owner-host"
ROLE_LABEL = "repro-lib.role"
ENGINE_LABEL = "repro-lib.engine"
LAB_LABEL = "repro-lib.lab"
KEEP_LABEL = "repro-lib.keep"  # objects of a --no-cleanup run: only an explicit clean removes them
LAB_ENV = "REPRO_LIB_LAB"


def lab_id() -> str:
    """Which lab this process belongs to: labs on one machine never touch each other's objects."""
    return os.environ.get(LAB_ENV, "default")


NAME_PREFIX = "repro-lib"


@dataclass(frozen=True)
class Paths:
    """Where raw results, derived tables, logs and reports live."""

    root: Path

    @classmethod
    def from_env(cls) -> Paths:
        """``$REPRO_LIB_HOME``, else the enclosing checkout of this project, else the cwd.

        Looking upwards makes a notebook kernel started in ``notebooks/`` use the
        project's ``data/`` rather than ``notebooks/data/``.
        """
        if os.environ.get("REPRO_LIB_HOME"):
            return cls(Path(os.environ["REPRO_LIB_HOME"]).resolve())
        cwd = Path.cwd().resolve()
        for candidate in (cwd, *cwd.parents):
            if (candidate / "pyproject.toml").is_file() and (candidate / "repro_lib").is_dir():
                return cls(candidate)
        return cls(cwd)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def processed(self) -> Path:
        return self.data / "processed"

    @property
    def store(self) -> Path:
        return self.raw / "trials.sqlite"

    @property
    def findings_store(self) -> Path:
        """The larger findings dataset (``data/raw/findings/``), made with the lab's commands."""
        return self.raw / "findings" / "trials.sqlite"

    @property
    def sample_store(self) -> Path:
        """The small real dataset shipped with the project (analysis without Docker)."""
        return self.raw / "sample" / "trials.sqlite"

    @property
    def runs(self) -> Path:
        return self.data / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def engines(self) -> Path:
        return self.data / "engines"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
