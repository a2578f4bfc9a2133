"""List scheduling of a program's instructions across graph nodes.

The scheduler emits a node's instructions after the previous node's, so a vector operation
never runs beside the next node's GEMMs even when nothing connects them (the softmax of one
head beside the Q·Kᵀ of the next, a LayerNorm beside unrelated weight loads). :func:`reorder`
moves instructions earlier where that is safe and the replayed timeline
(:mod:`vit2hw.cyclemodel`) says it issues sooner:

* **safe**: two instructions keep their order when they depend on each other — they touch
  the same scratchpad lines or constant entries with at least one writing, or both write one
  half of V (:func:`vit2hw.hazards.conflicts`), or they are a LOAD and a STORE (or two STOREs)
  of overlapping external memory. Any order that keeps every such pair computes exactly what
  the original does, so the ISA interpreter and the RTL give the same bits (the tests check);
* **greedy**: among the instructions whose predecessors are all placed, within a window of
  the oldest ``window`` not yet placed, take the one the sequencer would issue first (same
  issue rules as :func:`vit2hw.cyclemodel.timeline`; ties keep program order).

END and FENCE stay where they are (barriers). The result is deterministic.
"""

from __future__ import annotations

from typing import Sequence

from vit2hw.cyclemodel import Sequencer
from vit2hw.hazards import Running, accesses, spans_conflict
from vit2hw.isa import Geometry, Instruction, Op, instr_engine

__all__ = ["reorder", "depends"]


class _Info:
    __slots__ = ("reads", "writes", "engine")

    def __init__(self, ins: Instruction, g: Geometry):
        self.reads, self.writes = accesses(ins, g)       # external memory (DRAM) included
        self.engine = instr_engine(ins)


def _conflict(a: _Info, b: _Info) -> bool:
    return spans_conflict(a.reads, a.writes, b.reads, b.writes)


def _depends(a: _Info, b: _Info) -> bool:
    return _conflict(a, b)


def depends(a: Instruction, b: Instruction, g: Geometry) -> bool:
    """True when ``a`` and ``b`` must keep their relative order (see the module docstring)."""
    return _depends(_Info(a, g), _Info(b, g))


def reorder(instructions: Sequence[Instruction], g: Geometry, mem_latency: int = 1,
            window: int = 64) -> list[int]:
    """A dependency-preserving order of ``instructions`` (as indices into it)."""
    n = len(instructions)
    info = [_Info(ins, g) for ins in instructions]
    barrier = [ins.op in (Op.END, Op.FENCE) for ins in instructions]
    seq = Sequencer(g, mem_latency)
    order: list[int] = []
    running: Running[int] = Running()
    pool: list[int] = []          # the oldest unplaced instructions, in program order
    indeg: dict[int, int] = {}
    succ: dict[int, list[int]] = {}
    nxt = 0

    def admit(j: int) -> None:
        succ[j] = []
        d = 0
        for i in pool:
            if barrier[i] or barrier[j] or _depends(info[i], info[j]):
                succ[i].append(j)
                d += 1
        indeg[j] = d
        pool.append(j)

    def issue_time(j: int) -> int:
        e = info[j].engine
        return seq.issue_cycle(e, running.wait_mask(e, lambda i: _conflict(info[j], info[i])))

    while len(order) < n:
        while nxt < n and len(pool) < window:
            admit(nxt)
            nxt += 1
        ready = [j for j in pool if indeg[j] == 0]
        best = min(ready, key=lambda j: (issue_time(j), j))
        seq.issue(instructions[best], issue_time(best))
        running.record(instructions[best], best)
        order.append(best)
        pool.remove(best)
        for s in succ.pop(best):
            indeg[s] -= 1
        del indeg[best]
    return order
