"""Commits as culprit-search candidates: listed with git, built by the user's hook into images.

``git`` is the tool here (run as a subprocess, as a user would): it lists the
candidates, checks the refs and the repository, and makes a clean worktree of
each commit for the build hook. The hook is the user's own command (``docker
buildx build --target rootless -t {image} .``, a ``make`` target) run with
``sh -c`` in that worktree; it must tag ``{image}``. An image that already
exists on the engine is reused, so a later search over an overlapping range
builds nothing twice. A hook that fails makes its commit *unbuildable*, skipped
like ``git bisect skip``; its log is kept either way.

Worktrees are made under the system's temporary directory with the lab's
prefix and the owner's process id, and removed when the build ends, also on
Ctrl-C; one a killed process left behind is removed by the next search of the
repository.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import docker
import docker.errors

from .errors import MissingRequirement, UsageError
from .lab import pid_alive

#: placeholders a build hook may use; ``{image}`` is required
PLACEHOLDERS = ("{commit}", "{short}", "{image}")
#: repository of the images the hooks tag: ``repro-lib-bisect/<repo dir name>:<sha>``
IMAGE_REPOSITORY = "repro-lib-bisect"
#: prefix of the temporary worktrees (``<prefix><pid>-<random>``)
WORKTREE_PREFIX = "repro-lib-bisect-"

Built = Literal["built", "cached", "unbuildable"]


@dataclass(frozen=True)
class Commit:
    sha: str
    short: str
    subject: str


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise MissingRequirement("git is not installed", hint="install git") from exc
    if check and proc.returncode != 0:
        raise UsageError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc


def check_repository(repo: str | Path) -> Path:
    """The top directory of the git repository at ``repo``, checked for uncommitted changes.

    Raises:
        UsageError: not a git repository, or tracked files have uncommitted changes
            (the search builds in worktrees and never touches them, but a user who
            edited the tree probably meant to bisect what they edited).
    """
    path = Path(repo)
    if not path.is_dir():
        raise UsageError(f"--repo {repo}: no such directory")
    proc = _git(path, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise UsageError(f"--repo {repo} is not a git repository", hint="point it at a checkout")
    top = Path(proc.stdout.strip())
    changed = _git(top, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if changed:
        raise UsageError(
            f"--repo {repo} has uncommitted changes ({len(changed)} files, e.g. {changed[0][3:]})",
            hint="commit or stash them; the search builds each commit in its own worktree",
        )
    return top


def resolve(repo: Path, ref: str, option: str) -> str:
    """The full sha of the commit ``ref`` names.

    Raises:
        UsageError: ``ref`` names no commit in ``repo``.
    """
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UsageError(
            f"{option} {ref!r} is not a commit in {repo}",
            hint="use a sha, tag or branch that `git log` shows",
        )
    return proc.stdout.strip()


def list_commits(
    repo: str | Path,
    start: str,
    end: str,
    *,
    all_commits: bool = False,
    names: tuple[str, str] = ("--good", "--bad"),
) -> list[Commit]:
    """The candidates after ``start`` up to ``end``, oldest first: ``end`` in, ``start`` out.

    First-parent commits by default (the merges of a project that merges pull
    requests, each of which built on its own), every commit with ``all_commits``
    (``git log --topo-order``, as ``git bisect`` sees them). ``names`` are the
    options that gave ``start`` and ``end``, for the error messages.

    Raises:
        UsageError: a ref is not in the repository, both name one commit, or
            ``start`` is not an ancestor of ``end``.
    """
    top = Path(repo)
    start_sha, end_sha = resolve(top, start, names[0]), resolve(top, end, names[1])
    if start_sha == end_sha:
        raise UsageError(
            f"{names[0]} {start} and {names[1]} {end} are the same commit ({start_sha[:12]})",
            hint="give a known-good and a known-bad commit",
        )
    if _git(top, "merge-base", "--is-ancestor", start_sha, end_sha, check=False).returncode != 0:
        raise UsageError(
            f"{names[0]} {start} is not an ancestor of {names[1]} {end}",
            hint="for a bug that got fixed, the bad commit is the older one: use --direction fixed",
        )
    walk = ["--topo-order"] if all_commits else ["--first-parent"]
    out = _git(
        top, "log", "--reverse", *walk, "--format=%H%x00%h%x00%s", f"{start_sha}..{end_sha}"
    ).stdout
    return [Commit(*line.split("\x00", 2)) for line in out.splitlines() if line]


def image_name(repo: str | Path, sha: str) -> str:
    """``repro-lib-bisect/<repo dir name>:<sha>``, the name made valid for Docker."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(repo).resolve().name.lower()).strip("._-")
    return f"{IMAGE_REPOSITORY}/{name or 'repo'}:{sha}"


def check_hook(command: str) -> None:
    """Raises UsageError: the hook does not tag ``{image}``."""
    if "{image}" not in command:
        raise UsageError(
            "--build must tag the image it builds as {image}",
            hint="e.g. --build 'docker build -t {image} .'",
        )


def hook_command(command: str, commit: Commit, image: str) -> str:
    """The hook with its placeholders filled (other braces, e.g. ``${VAR}``, stay)."""
    values = {"{commit}": commit.sha, "{short}": commit.short, "{image}": image}
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    return command


def image_exists(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_stale_worktrees(repo: Path) -> list[str]:
    """Remove this repository's build worktrees whose owner process is gone (a kill)."""
    removed = []
    listing = _git(repo, "worktree", "list", "--porcelain").stdout
    for line in listing.splitlines():
        if not line.startswith("worktree "):
            continue
        path = Path(line.removeprefix("worktree "))
        match = re.match(rf"{re.escape(WORKTREE_PREFIX)}(\d+)-", path.parent.name)
        if match and not pid_alive(int(match[1])):
            _git(repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path.parent, ignore_errors=True)
            removed.append(str(path))
    _git(repo, "worktree", "prune", check=False)
    return removed


@contextlib.contextmanager
def worktree(repo: Path, sha: str) -> Iterator[Path]:
    """A clean, detached worktree of ``sha``, removed afterwards (also on Ctrl-C)."""
    parent = Path(tempfile.mkdtemp(prefix=f"{WORKTREE_PREFIX}{os.getpid()}-"))
    path = parent / "tree"
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
        yield path
    finally:
        _git(repo, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(parent, ignore_errors=True)
        _git(repo, "worktree", "prune", check=False)


def build(
    client: docker.DockerClient,
    repo: Path,
    commit: Commit,
    command: str,
    log_path: Path,
    *,
    timeout: float | None = None,
) -> tuple[Built, str]:
    """Make the image of ``commit``: reuse it when the engine has it, else run the hook.

    Returns the build state and the image name. The hook's output goes to
    ``log_path``; a hook that exits non-zero, times out, or does not tag the
    image makes the commit ``"unbuildable"`` (the log says which).
    """
    image = image_name(repo, commit.sha)
    if image_exists(client, image):
        return "cached", image
    log_path.parent.mkdir(parents=True, exist_ok=True)
    filled = hook_command(command, commit, image)
    with log_path.open("w") as log, worktree(repo, commit.sha) as tree:
        log.write(f"$ {filled}\n# in a worktree of {commit.sha}\n")
        log.flush()
        try:
            proc = subprocess.run(
                ["sh", "-c", filled],
                cwd=tree,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout:g} s"
        if code != 0:
            log.write(f"\n# the build hook failed: exit {code}\n")
            return "unbuildable", image
    if not image_exists(client, image):
        with log_path.open("a") as log:
            log.write(f"\n# the build hook succeeded but the engine has no image {image}\n")
        return "unbuildable", image
    return "built", image
