"""The example CI workflow as data: its jobs, and the repro-lib commands its steps run.

The tests run these very commands (with the workflow's expressions filled in),
so the example cannot drift from what is tested.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "github-actions.yml"
_EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
# a repro-lib call ends at a shell operator or the end of a command substitution
_CALL = re.compile(r"(?:^|[\s(])(?:\S*/)?repro-lib\s+([^|;&)]*)")


def load() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def run_scripts(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def logical_lines(script: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [line.strip() for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def fill(text: str, values: dict[str, str]) -> str:
    """Replace ``${{ expr }}`` and ``$NAME`` / ``${NAME}`` with ``values`` (unknown: left)."""
    text = _EXPRESSION.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    for name, value in values.items():
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, text)
    return text


def repro_lib_calls(script: str, values: dict[str, str] | None = None) -> list[list[str]]:
    """Every ``repro-lib …`` call in a step's script, as argv after ``repro-lib``."""
    calls = []
    for line in logical_lines(fill(script, values or {})):
        for match in _CALL.finditer(line):
            calls.append(shlex.split(match.group(1)))
    return calls


def job_calls(job_name: str, values: dict[str, str]) -> list[list[str]]:
    job = load()["jobs"][job_name]
    return [call for script in run_scripts(job) for call in repro_lib_calls(script, values)]


def expand_globs(argv: list[str], cwd: Path) -> list[str]:
    """What the shell does to ``stores/shard-*.sqlite`` (sorted, as bash sorts)."""
    out: list[str] = []
    for arg in argv:
        if any(ch in arg for ch in "*?["):
            found = sorted(glob.glob(arg, root_dir=cwd))
            out += found or [arg]
        else:
            out.append(arg)
    return out
