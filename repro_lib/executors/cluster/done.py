"""Which trials of a cell are done, kept on the scheduler for whoever runs it next.

When a worker dies mid-cell, Dask reruns the cell elsewhere, and the rerun must
skip exactly the trials already done: none run twice, none lost. The client
seeds the list with what its store holds (a ``--resume`` starts from there),
and the worker running the cell adds each try it records.

The list lives in Dask ``Variable`` objects, which stay readable by anyone who
comes later; a ``Queue`` hands each item to one reader and pub-sub
only reaches readers listening at the time. It is cut into chunks of ``CHUNK``
entries, one Variable each (``<name>-0``, ``<name>-1``, ...), and an append
rewrites only the last chunk: a try sends at most ``CHUNK`` entries through the
scheduler however long the cell, where rewriting the whole list after each try
sent O(n²) entries for a cell of n tries.

A Variable ``<name>-chunks`` counts the chunks; the client sets it when it
seeds the list, before the cell's task exists, and a writer raises it before it
writes a new chunk. A reader reads that many chunks; one that is still unset
(its writer died between counting and writing it) ends the list, so a reader
never polls an unset Variable otherwise (the scheduler logs each such miss as an
error). One worker at a time writes a cell's list: a rerun starts once its
predecessor's worker is gone, and a resume's client has a tag, so names, of its
own. Setting a Variable is atomic on the scheduler, so a worker that dies
mid-write leaves the chunk as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ...records import Outcome
from .lease import dask_distributed

CHUNK = 64  # entries per Variable; an append re-sends at most this many
SEED_WAIT = 30  # seconds a reader waits for the client to seed the list


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
        self._counted = False  # the chunk count on the scheduler is this list's

    def _variable(self, suffix: str) -> Any:
        return dask_distributed().Variable(f"{self.name}-{suffix}", client=self.client)

    def read(self) -> list[Done]:
        """Every entry the scheduler holds; later appends continue after them."""
        chunks = int(self._variable("chunks").get(timeout=SEED_WAIT))
        entries: list[Done] = []
        for index in range(chunks):
            try:
                chunk = self._variable(str(index)).get(timeout=0)
            except TimeoutError:  # its writer died after counting it, before writing it
                break
            entries += [Done(int(t), Outcome(o)) for t, o in chunk]
        self.entries, self._counted = entries, True
        return list(entries)

    def extend(self, new: Iterable[Done]) -> None:
        """Add entries, rewriting only the chunks they land in (the client seeds the
        list with this, even with no entries)."""
        start = len(self.entries)
        self.entries += new
        chunks = -(-len(self.entries) // CHUNK)
        if not self._counted or chunks != -(-start // CHUNK):
            self._variable("chunks").set(chunks)
            self._counted = True
        for index in range(start // CHUNK, chunks):
            part = self.entries[index * CHUNK : (index + 1) * CHUNK]
            self._variable(str(index)).set([[d.trial, Outcome(d.outcome).value] for d in part])

    def delete(self) -> None:
        """Remove the list from the scheduler (the client, once its cells ended)."""
        count = self._variable("chunks")
        for index in range(int(count.get(timeout=SEED_WAIT))):
            self._variable(str(index)).delete()
        count.delete()
