"""Which trials of a cell are done, kept on the scheduler for whoever runs it next.

When a worker dies mid-cell, Dask reruns the cell elsewhere, and the rerun must
skip exactly the trials already done: none run twice, none lost. The client
seeds the list with what its store holds (a ``--resume`` starts from there),
and the worker running the cell adds each try it records.

The list lives in Dask ``Variable``\\ s because a Variable stays readable by
anyone who comes later; a ``Queue`` hands each item to one reader and pub-sub
only reaches readers listening at the time. It is cut into chunks of ``CHUNK``
entries, one Variable each (``<name>-0``, ``<name>-1``, ...), and an append
rewrites only the last chunk: a try sends at most ``CHUNK`` entries through the
scheduler however long the cell, where rewriting the whole list after each try
sent O(n²) entries for a cell of n tries.

Reading walks the chunks from 0 up to the first one that is unset. That is the
whole list because chunks fill in order and one worker at a time writes a
cell's list (a rerun starts once its predecessor's worker is gone; a resume's
client uses its own tag, so its own names). Setting a Variable is atomic on the
scheduler, so a worker that dies mid-write leaves the chunk as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, NamedTuple

from ...records import Outcome
from .lease import dask_distributed

CHUNK = 64  # entries per Variable; an append re-sends at most this many


def done_list_name(tag: str, run_id: str) -> str:
    """The name of the done list of one cell of one client (its tag)."""
    return f"{tag}-{run_id}-done"


class Done(NamedTuple):
    trial: int
    outcome: Outcome


class DoneList:
    """One cell's done trials: :meth:`read` them all, :meth:`extend` with new ones."""

    def __init__(self, name: str, *, client: Any = None) -> None:
        self.name = name
        self.client = client  # None on a worker: the worker's own client
        self.entries: list[Done] = []

    def _chunk(self, index: int) -> Any:
        return dask_distributed().Variable(f"{self.name}-{index}", client=self.client)

    def read(self) -> list[Done]:
        """Every entry the scheduler holds; later appends continue after them."""
        entries: list[Done] = []
        index = 0
        while True:
            try:
                chunk = self._chunk(index).get(timeout=0)
            except TimeoutError:  # unset: the list ends before this chunk
                break
            entries += [Done(int(t), Outcome(o)) for t, o in chunk]
            index += 1
        self.entries = entries
        return list(entries)

    def extend(self, new: Iterable[Done]) -> None:
        """Add entries, rewriting only the chunks they land in."""
        start = len(self.entries)
        self.entries += new
        if len(self.entries) == start:
            return
        for index in range(start // CHUNK, (len(self.entries) - 1) // CHUNK + 1):
            part = self.entries[index * CHUNK : (index + 1) * CHUNK]
            self._chunk(index).set([[d.trial, Outcome(d.outcome).value] for d in part])

    def delete(self) -> None:
        """Remove every chunk from the scheduler (the client, once its sweep ends)."""
        index = 0
        while True:
            chunk = self._chunk(index)
            try:
                chunk.get(timeout=0)
            except TimeoutError:
                return
            with contextlib.suppress(Exception):
                chunk.delete()
            index += 1
