"""Local stand-ins for images this machine cannot pull, built from Debian packages.

* a ``registry:2``-compatible image from Debian's ``docker-registry`` binary and
  the shared libraries ``ldd`` lists;
* a tiny base image from ``busybox-static``.

They are test fixtures: the project's own scripts build them with ``docker import``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile

import docker
import docker.errors

from .errors import MissingRequirement
from .lab import connect

REGISTRY_FIXTURE = "repro-lib-fixture/registry:2"
BASE_FIXTURE = "repro-lib-fixture/busybox:latest"

REGISTRY_CONFIG = b"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
"""

BUSYBOX_APPLETS = (
    "sh",
    "ls",
    "cat",
    "mkdir",
    "echo",
    "true",
    "tar",
    "rm",
    "mv",
    "cp",
    "sleep",
    "test",
    "[",
)


def _shared_libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m and os.path.exists(m.group(1)):
            libs.append(m.group(1))
    return libs


def _add_file(tar: tarfile.TarFile, src: str, arcname: str, mode: int = 0o755) -> None:
    real = os.path.realpath(src)
    info = tar.gettarinfo(real, arcname=arcname.lstrip("/"))
    info.mode = mode
    info.uid = info.gid = 0
    with open(real, "rb") as f:
        tar.addfile(info, f)


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _need(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if not found:
        raise MissingRequirement(f"{path} not found", hint=f"apt-get install {package}")
    return found


def registry_rootfs() -> bytes:
    binary = _need("/usr/bin/docker-registry", "docker-registry")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in (
            "bin",
            "etc",
            "etc/docker",
            "etc/docker/registry",
            "var",
            "var/lib",
            "var/lib/registry",
            "tmp",
        ):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_file(tar, binary, "bin/registry")
        for lib in _shared_libraries(binary):
            parent = os.path.dirname(lib).lstrip("/")
            parts = parent.split("/")
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name not in tar.getnames():
                    _add_dir(tar, name)
            _add_file(tar, lib, lib)
        info = tarfile.TarInfo("etc/docker/registry/config.yml")
        info.size = len(REGISTRY_CONFIG)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(REGISTRY_CONFIG))
    return buf.getvalue()


def busybox_rootfs() -> bytes:
    binary = _need("/bin/busybox", "busybox-static")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "root"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_file(tar, binary, "bin/busybox")
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "/bin/busybox"
            tar.addfile(info)
    return buf.getvalue()


def _import(client: docker.DockerClient, rootfs: bytes, ref: str, changes: list[str]) -> str:
    repo, tag = ref.rsplit(":", 1)
    client.api.import_image_from_data(rootfs, repository=repo, tag=tag, changes=changes)
    return client.images.get(ref).id


def build_fixtures(client: docker.DockerClient, *, force: bool = False) -> dict[str, str]:
    """Build both fixture images unless present; returns name -> image id."""
    out = {}
    specs = [
        (
            REGISTRY_FIXTURE,
            registry_rootfs,
            [
                'ENTRYPOINT ["/bin/registry"]',
                'CMD ["serve", "/etc/docker/registry/config.yml"]',
                "VOLUME /var/lib/registry",
            ],
        ),
        (BASE_FIXTURE, busybox_rootfs, ['CMD ["/bin/sh"]']),
    ]
    for ref, rootfs, changes in specs:
        if not force:
            try:
                out[ref] = client.images.get(ref).id
                continue
            except docker.errors.ImageNotFound:
                pass
        out[ref] = _import(client, rootfs(), ref, changes)
    return out


def main() -> None:
    for ref, image_id in build_fixtures(connect(), force=bool(os.environ.get("FORCE"))).items():
        print(f"{ref} {image_id[:19]}")


if __name__ == "__main__":
    main()
