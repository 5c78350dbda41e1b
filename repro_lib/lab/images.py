"""Images: making one present, pushing it, seeding the mirror under its Docker Hub path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import docker
import docker.errors

from ..errors import InfraError, MissingRequirement, UsageError
from .registry import Registry


def ensure_image(client: docker.DockerClient, image: str, *, offline: bool) -> None:
    """Make ``image`` available locally, pulling it only when allowed.

    Raises:
        MissingRequirement: the image is absent and cannot (or may not) be pulled.
    """
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise InfraError(f"cannot inspect image {image}: {exc}") from exc
    if offline:
        raise MissingRequirement(
            f"image {image} is not present locally and --offline forbids pulling",
            hint=f"`docker load` or `docker pull {image}` first, or drop --offline",
        )
    repo, tag = split_tag(image)
    try:
        client.images.pull(repo, tag=tag)
    except docker.errors.DockerException as exc:
        raise MissingRequirement(
            f"cannot pull image {image}: {exc.__class__.__name__}",
            hint="check the name and your network, or `docker load` it and pass --offline",
        ) from exc


def split_tag(image: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag); a ``:`` inside a registry host:port is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def docker_hub_path(image: str) -> tuple[str, str]:
    """The repository path and tag of a Docker Hub image as a mirror serves it.

    ``alpine`` -> ``library/alpine``; ``user/app:1`` -> ``user/app``, ``1``.

    Raises:
        UsageError: the image lives on another registry (a mirror only serves docker.io).
    """
    name, tag = split_tag(image)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if parts[0] not in ("docker.io", "index.docker.io"):
            raise UsageError(
                f"base image {image} is not on docker.io; the mirror can only stand in for docker.io"
            )
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["library", parts[0]]
    return "/".join(parts), tag


def push_image(client: docker.DockerClient, local: str, remote: str) -> None:
    """Tag ``local`` as ``remote``, push it, and drop the extra tag.

    Raises:
        InfraError: the push failed (the stream reported an error).
    """
    repo, tag = split_tag(remote)
    try:
        client.images.get(local).tag(repo, tag)
        for chunk in client.images.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                raise InfraError(f"push of {remote} failed: {chunk.get('error') or chunk}")
    except docker.errors.DockerException as exc:
        raise InfraError(f"push of {remote} failed: {exc}") from exc
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(remote, noprune=True)


def seed_mirror(client: docker.DockerClient, mirror: Registry, images: Iterable[str]) -> list[str]:
    """Push each local image into the mirror under its docker.io path, once.

    Returns the mirror references that were pushed (already present ones are skipped).
    """
    pushed = []
    for image in images:
        path, tag = docker_hub_path(image)
        if mirror.has(path, tag):
            continue
        push_image(client, image, f"{mirror.address}/{path}:{tag}")
        pushed.append(f"{mirror.address}/{path}:{tag}")
    return pushed
