"""A test backend: the real engine backend whose real output loses ``repro.txt`` on demand.

It lets tests control outcomes while every build, push, reset and tarball stays
real. Select it with ``REPRO_LIB_BACKEND_MODULES=tests.controlled_backend`` and
``--backend engine-dropping``. ``REPRO_LIB_DROP_TRIALS`` lists trial numbers whose
output loses the file; ``REPRO_LIB_FAULTY_VERSIONS`` lists "versions" (the
``--versions``/image value) whose every output loses it. An image on the engine
labelled ``repro-lib.test.drop-probability=P`` (a culprit search's candidate, built
by its hook) makes each try of a cell of that image lose it with probability ``P``,
drawn from a generator seeded with the run id and trial, so a rerun of a trial
draws the same. ``REPRO_LIB_BUILD_DELAY`` (seconds) makes every try at least that long.
``REPRO_LIB_BUILD_JOURNAL``
names a file that gets one line ``<run id> <trial> <host>`` per trial build, so a
test can count what really ran (stores keep one row per trial, whoever ran it twice).
"""

from __future__ import annotations

import os
import random
import tarfile
import time
from pathlib import Path
from typing import Any

import docker.errors

from repro_lib import lab
from repro_lib.builders import BatchEnv, BuildOutput, register
from repro_lib.builders.engine import EngineBackend

DROPPED = "repro.txt"
#: the image label that gives a candidate image's chance per try to lose the file
DROP_PROBABILITY_LABEL = "repro-lib.test.drop-probability"


def drop_from_tarball(path, name: str = DROPPED) -> None:
    tmp = path.with_suffix(".tmp")
    with tarfile.open(path) as tin, tarfile.open(tmp, "w") as tout:
        for m in tin.getmembers():
            if m.name.lstrip("./") != name:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    tmp.replace(path)


def _csv(name: str) -> set[str]:
    return {v.strip() for v in os.environ.get(name, "").split(",") if v.strip()}


@register("engine-dropping")
class DroppingEngineBackend(EngineBackend):
    name = "engine-dropping"

    @classmethod
    def from_options(cls, options: Any) -> DroppingEngineBackend:
        backend = super().from_options(options)
        backend.label = options.image
        return backend

    def __init__(self, **options: Any) -> None:
        super().__init__(**{**options, "image": None, "cache_image": None})
        self.label = ""
        self.drop = {int(t) for t in _csv("REPRO_LIB_DROP_TRIALS")}
        self.faulty = _csv("REPRO_LIB_FAULTY_VERSIONS")
        self.drop_probability = 0.0

    def prepare(self, env: BatchEnv, *, lane: int = 0) -> None:
        super().prepare(env, lane=lane)
        labelled = _drop_probability(env.client, self.label) if self.label else None
        if labelled is not None:
            self.drop_probability = labelled
        if labelled is not None or (
            self.label and self.label in self.faulty | _csv("REPRO_LIB_CLEAN_VERSIONS")
        ):
            self.image = self.cache_image = self.version = self.cache_version = self.label

    def build(self, trial: int) -> BuildOutput:
        out = super().build(trial)
        journal = os.environ.get("REPRO_LIB_BUILD_JOURNAL")
        if journal and self.env is not None:
            with Path(journal).open("a") as f:
                f.write(f"{self.env.run_id} {trial} {lab.host_name()}\n")
        unlucky = bool(
            self.drop_probability
            and self.env is not None
            and random.Random(f"{self.env.run_id}/{trial}").random() < self.drop_probability
        )
        if out.tarball is not None and (
            trial in self.drop or self.version in self.faulty or unlucky
        ):
            drop_from_tarball(out.tarball)
        # a floor on a try's length, so a test's timing does not hang on how fast the
        # engine builds on the machine of the day
        time.sleep(float(os.environ.get("REPRO_LIB_BUILD_DELAY") or 0))
        return out


def _drop_probability(client, image: str) -> float | None:
    """The image's ``DROP_PROBABILITY_LABEL``, or None (no such image, or no label)."""
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.DockerException:  # not an image (a plain version name)
        return None
    value = labels.get(DROP_PROBABILITY_LABEL)
    return float(value) if value is not None else None
