"""Assigning layers to CUDA streams so that independent branches run concurrently.

The rule (as TensorRT does it): a layer continues the stream of its first producer that has not
yet handed its stream on; otherwise it opens a new stream (up to ``max_streams``, then reuses them
round-robin). A layer waits (an event) for each producer on another stream. Inside a captured CUDA
graph these waits become graph edges, so Inception's four branches become four parallel chains.

>>> plan = assign_streams([[], [0], [0], [1, 2]], max_streams=4)
>>> plan.stream
[0, 0, 1, 0]
>>> plan.waits
[(), (), (0,), (2,)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class StreamPlan:
    """``stream[i]``: the stream of step ``i``; ``waits[i]``: steps on other streams it waits for;
    ``event_steps``: steps whose completion another stream waits for (they record an event)."""

    stream: list[int]
    waits: list[tuple[int, ...]]
    event_steps: frozenset[int]

    @property
    def num_streams(self) -> int:
        return max(self.stream, default=0) + 1


def assign_streams(producers: Sequence[Sequence[int]], max_streams: int = 4) -> StreamPlan:
    """Streams for steps in topological order; ``producers[i]``: the earlier steps step ``i`` reads."""
    stream: list[int] = []
    handed_on: set[int] = set()
    next_new = 1
    for preds in producers:
        chosen = None
        for p in sorted(set(preds)):
            if p not in handed_on:
                handed_on.add(p)
                chosen = stream[p]
                break
        if chosen is None:
            if not preds or max_streams <= 1:
                chosen = 0
            else:
                chosen = next_new % max_streams
                next_new += 1
        stream.append(chosen)
    waits = []
    event_steps: set[int] = set()
    for i, preds in enumerate(producers):
        w = tuple(sorted({p for p in preds if stream[p] != stream[i]}))
        waits.append(w)
        event_steps.update(w)
    return StreamPlan(stream, waits, frozenset(event_steps))
