"""A test backend: the real engine backend whose real output loses ``repro.txt`` on demand.

It lets tests control outcomes (which trials lose a layer) while every build,
push, reset and tarball stays real. Select it with
``REPRO_LIB_BACKEND_MODULES=controlled_backend`` and ``--backend engine-dropping``;
``REPRO_LIB_DROP_TRIALS`` lists the trial numbers whose output loses the file.
"""

from __future__ import annotations

import os
import tarfile

from repro_lib.builders import BuildOutput, register
from repro_lib.builders.engine import EngineBackend

DROPPED = "repro.txt"


def drop_from_tarball(path, name: str = DROPPED) -> None:
    tmp = path.with_suffix(".tmp")
    with tarfile.open(path) as tin, tarfile.open(tmp, "w") as tout:
        for m in tin.getmembers():
            if m.name.lstrip("./") != name:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    tmp.replace(path)


@register("engine-dropping")
class DroppingEngineBackend(EngineBackend):
    name = "engine-dropping"

    def __init__(self, **options):
        super().__init__(**options)
        spec = os.environ.get("REPRO_LIB_DROP_TRIALS", "")
        self.drop = {int(t) for t in spec.split(",") if t.strip()}

    def build(self, trial: int) -> BuildOutput:
        out = super().build(trial)
        if trial in self.drop and out.tarball is not None:
            drop_from_tarball(out.tarball)
        return out
