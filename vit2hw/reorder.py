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
  issue rules as :func:`vit2hw.cyclemodel.timeline`);
* **critical path first on a tie**: several instructions often could issue in the same cycle
  (their engines idle, nothing to wait for). The one heading the longest chain of dependent
  work in the window goes first — the chain's length is the sum of its instructions' engine
  cycles (:func:`vit2hw.cyclemodel.engine_cycles`), the classic list-scheduling priority —
  then program order (``tie="chain"``). Program order alone (``tie="order"``) let work off
  the critical path take an engine that a chain leading to the next GEMMs needed; on
  DeiT-Tiny the chain rule saves 2.9 % of the cycles on the ZCU102 preset and 1.3 % on the
  default one. It is a heuristic that ignores which engines the chain needs, so on a small
  array it can lose a little (vit_digits on sim4x4: +0.2 %); the scheduler replays both
  orders, each with the windows in :data:`WINDOWS`, and keeps the shortest program.

* **either DMA engine for B and P**: a LOAD into B or P may run on the DMA engine as well as
  on the weight DMA (the LOAD's ``on_dma`` bit). When it is placed, it goes to the DMA engine
  if that one would start it sooner; the weight DMA keeps it on a tie. Sharing a write port
  does not order two LOADs (:data:`vit2hw.hazards.PORT_SPACES`): only their ``wait`` bits keep
  them apart in time.

END and FENCE stay where they are (barriers). The result is deterministic.
"""

from __future__ import annotations

from typing import Sequence

from vit2hw.cyclemodel import Sequencer, engine_cycles
from vit2hw.hazards import PORT_SPACES, Running, accesses, spans_conflict
from vit2hw.isa import DMA_CAPABLE, Engine, Geometry, Instruction, Op, Target, instr_engine

__all__ = ["reorder", "depends", "TIE_RULES", "WINDOWS"]


class _Info:
    __slots__ = ("reads", "writes", "oreads", "owrites", "engine")

    def __init__(self, ins: Instruction, g: Geometry):
        self.reads, self.writes = accesses(ins, g)       # external memory (DRAM) included
        # what orders two instructions: their data, not the write ports they share
        self.oreads = [s for s in self.reads if s.space not in PORT_SPACES]
        self.owrites = [s for s in self.writes if s.space not in PORT_SPACES]
        self.engine = instr_engine(ins)


def _conflict(a: _Info, b: _Info) -> bool:
    return spans_conflict(a.reads, a.writes, b.reads, b.writes)


def _depends(a: _Info, b: _Info) -> bool:
    return spans_conflict(a.oreads, a.owrites, b.oreads, b.owrites)


def depends(a: Instruction, b: Instruction, g: Geometry) -> bool:
    """True when ``a`` and ``b`` must keep their relative order (see the module docstring)."""
    return _depends(_Info(a, g), _Info(b, g))


TIE_RULES = ("chain", "order")
#: look-ahead windows the scheduler replays (each with both tie rules), keeping the shortest
#: program: a wider window lets more of the next node's work move up, which pays on some
#: programs and loses on others (DeiT-Tiny on zcu102 with the one-pass softmax: 784 788
#: cycles with 64, 775 542 with 80, 802 578 with 128)
WINDOWS = (64, 80)


def reorder(instructions: Sequence[Instruction], g: Geometry, mem_latency: int = 1,
            window: int = 64, tie: str = "chain") -> tuple[list[int], list[Instruction]]:
    """A dependency-preserving order of ``instructions``: the indices into it, and the
    instructions in that order. ``tie`` picks among instructions that would issue in the
    same cycle (see the module docstring). A LOAD into B or P that the DMA engine would
    start sooner than the weight DMA goes to the DMA engine (its ``on_dma`` bit set in the
    returned instructions)."""
    if tie not in TIE_RULES:
        raise ValueError(f"tie must be one of {TIE_RULES}, got {tie!r}")
    n = len(instructions)
    instructions = list(instructions)
    info = [_Info(ins, g) for ins in instructions]
    movable = [ins.op == Op.LOAD and Target(ins["target"]) in DMA_CAPABLE and info[i].engine == Engine.WDMA
               for i, ins in enumerate(instructions)]
    cost = [0 if info[i].engine is None else engine_cycles(ins, g, mem_latency)
            for i, ins in enumerate(instructions)]
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

    def issue_time(j: int, e: Engine | None) -> int:
        return seq.issue_cycle(e, running.wait_mask(e, lambda i: _conflict(info[j], info[i])))

    def earliest(j: int) -> tuple[int, Engine | None]:
        t = issue_time(j, info[j].engine)
        if movable[j]:
            td = issue_time(j, Engine.DMA)
            if td < t:
                return td, Engine.DMA
        return t, info[j].engine

    def chain(j: int, memo: dict[int, int]) -> int:
        """Engine cycles of the longest dependent chain from ``j`` among the admitted."""
        if j not in memo:
            memo[j] = cost[j] + max((chain(s, memo) for s in succ[j]), default=0)
        return memo[j]

    while len(order) < n:
        while nxt < n and len(pool) < window:
            admit(nxt)
            nxt += 1
        when = {j: earliest(j) for j in pool if indeg[j] == 0}
        first = min(t for t, _ in when.values())
        memo: dict[int, int] = {}
        tied = [j for j, (t, _) in when.items() if t == first]
        best = min(tied, key=lambda j: (-chain(j, memo), j)) if tie == "chain" else min(tied)
        if when[best][1] != info[best].engine:
            instructions[best] = instructions[best].with_fields(on_dma=1)
            info[best].engine = when[best][1]
        seq.issue(instructions[best], first)
        running.record(instructions[best], best)
        order.append(best)
        pool.remove(best)
        for s in succ.pop(best):
            indeg[s] -= 1
        del indeg[best]
    return order, [instructions[i] for i in order]
