"""Scenarios: a Dockerfile, its context, and the paths every result must hold.

A scenario directory holds a ``Dockerfile``, any context files, and
``expected.txt`` naming one expected path per line (``#`` comments allowed; a
trailing ``/`` marks a directory). ``expected.txt`` itself is not sent as
context. The reference scenario (the public reproduction) is built in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .config import SCENARIOS_DIR
from .errors import UsageError

EXPECTED_FILE = "expected.txt"
REFERENCE = "reference"
#: a leading ``./`` or ``/`` of an expected path; a leading dot belongs to the name (``.bashrc``)
_LEADING_ROOT = re.compile(r"^(?:\./|/)+")


@dataclass(frozen=True)
class Scenario:
    name: str
    files: dict[str, bytes]  # context files, Dockerfile included
    expected: tuple[str, ...]
    base_image: str | None = None  # passed as build-arg BASE_IMAGE when set

    @property
    def dockerfile(self) -> str:
        return self.files["Dockerfile"].decode()

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name] + b"\0")
        return h.hexdigest()[:12]

    def build_args(self) -> dict[str, str]:
        return {"BASE_IMAGE": self.base_image} if self.base_image else {}

    def base_images(self) -> list[str]:
        """The images named in ``FROM`` lines (with BASE_IMAGE substituted)."""
        images = []
        default_base = "alpine:latest"
        for line in self.dockerfile.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].upper() == "ARG" and words[1].startswith("BASE_IMAGE="):
                default_base = words[1].split("=", 1)[1]
            if len(words) >= 2 and words[0].upper() == "FROM":
                ref = words[1]
                if ref in ("${BASE_IMAGE}", "$BASE_IMAGE"):
                    ref = self.base_image or default_base
                if ref != "scratch":
                    images.append(ref)
        return images

    def write_to(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return directory


def load_scenario(path: str | Path | None = None, *, base_image: str | None = None) -> Scenario:
    """Load a scenario directory (default: the built-in reference scenario).

    Raises:
        UsageError: the directory is missing, lacks a Dockerfile, or names no expected paths.
    """
    directory = Path(path) if path else SCENARIOS_DIR / REFERENCE
    name = REFERENCE if path is None else directory.name
    if not directory.is_dir():
        raise UsageError(f"scenario directory {directory} does not exist")
    if not (directory / "Dockerfile").is_file():
        raise UsageError(
            f"scenario directory {directory} has no Dockerfile",
            hint="add a Dockerfile and an expected.txt listing the paths to check",
        )
    expected_path = directory / EXPECTED_FILE
    if not expected_path.is_file():
        raise UsageError(
            f"scenario directory {directory} has no {EXPECTED_FILE}",
            hint="list one expected path per line, e.g. repro.txt",
        )
    expected = tuple(
        _LEADING_ROOT.sub("", line.strip()) if line.strip() != "/" else "/"
        for line in expected_path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not expected:
        raise UsageError(f"{expected_path} names no expected paths")
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != EXPECTED_FILE:
            files[str(p.relative_to(directory))] = p.read_bytes()
    return Scenario(name=name, files=files, expected=expected, base_image=base_image)
