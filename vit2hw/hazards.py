"""Which on-chip storage each instruction touches, and the ``wait`` masks that follow.

The accelerator's four engines (DMA, GEMM, vector, weight DMA; :class:`vit2hw.isa.Engine`) run
concurrently while the sequencer issues instructions in program order, each once its own
engine is free. An instruction must therefore also wait for another engine when that
engine's *latest* instruction (the only one of it that can still be running: an engine
runs one instruction at a time, and every earlier one of it finished before the latest
started; the GEMM engine's latest two, as it takes a GEMM while the previous one drains)
touches the same storage with at least one of the two writing, or when both write
the same half of the V scratchpad (one write port per half), or both write A (one write
port). :func:`assign_waits` sets exactly those bits;
:func:`conflicts` is the test both it and the timing checks in the tests use.

Storage is described as half-open line ranges per space (:class:`Span`): the scratchpads
A, B, O, V, P (lines; A and B over all banks), the three constant memories (entries), and
the pseudo-space ``VWRITE`` for V's two write ports (V is stored as two halves, lines
below ``ceil(v_depth/2)`` and the rest, each with one write port: ``VWRITE`` 0 / 1), the
pseudo-space ``AWRITE`` for A's one write port (:data:`A_PORT`), and
external memory (``DRAM``, bytes): the weight DMA's LOADs (e.g. of keys into B) may read what
a STORE of the DMA engine is still writing. Instruction fetches are not tracked: programs
never write their own instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from vit2hw.isa import (WAIT_OLDER_GEMM, Engine, Geometry, Instruction, Op, Target, empty_gemm, instr_engine,
                        store_row_words)

T = TypeVar("T")

__all__ = ["Span", "A_PORT", "B_PORT", "P_PORT", "PORT_SPACES", "accesses", "conflicts", "spans_conflict", "assign_waits", "in_flight", "Running", "v_half_lines", "dram_span"]


@dataclass(frozen=True)
class Span:
    space: str
    lo: int
    hi: int

    def overlaps(self, other: "Span") -> bool:
        return self.space == other.space and self.lo < other.hi and other.lo < self.hi


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def v_half_lines(g: Geometry) -> int:
    """Lines in V's low half (``hdl.scratchpad.SplitScratchpad.depth_lo``)."""
    return _ceil(g.v_depth, 2)


#: A's single write port, shared by the DMA engine (LOADs and STOREs into A) and the vector
#: engine (SOFTMAX into A). The DMA engine's writers list it among their reads and the vector
#: engine's among its writes, so a DMA writer and a SOFTMAX into A never run at the same time
#: while the DMA engine's writers (one at a time anyway) stay free to be reordered among
#: themselves.
A_PORT = Span("AWRITE", 0, 1)
#: B's and P's one write port each, shared by the weight DMA and the DMA engine (a LOAD's
#: ``on_dma`` bit): every LOAD into B (P) lists it among its writes, so LOADs into B on the
#: two engines never run at the same time. Like every port, it says nothing about order:
#: :data:`PORT_SPACES` lists the spaces :mod:`vit2hw.reorder` leaves out of its dependencies.
B_PORT = Span("BWRITE", 0, 1)
P_PORT = Span("PWRITE", 0, 1)
PORT_SPACES = frozenset({"BWRITE", "PWRITE"})


def _v_port(lo: int, n: int, g: Geometry) -> Span:
    """The V write ports used by writing lines ``[lo, lo + n)``: half 0, half 1 or both."""
    half = v_half_lines(g)
    first = 0 if lo < half else 1
    last = 0 if lo + max(n, 1) - 1 < half else 1
    return Span("VWRITE", first, last + 1)


def dram_span(ins: Instruction, g: Geometry) -> Span | None:
    """External bytes a LOAD reads or a STORE writes (bounding interval), else None."""
    if ins.op not in (Op.LOAD, Op.STORE) or ins["rows"] == 0 or (ins.op == Op.STORE and ins.get("dst_a")):
        return None
    wpl = g.words_per_line(Target(ins["target"]), 1 << ins["ebytes_log2"])
    lo = ins["ext_addr"]
    hi = lo + (ins["rows"] - 1) * ins["ext_stride"] + ins["row_lines"] * wpl * g.bus_bytes
    return Span("DRAM", lo, hi)


def accesses(ins: Instruction, g: Geometry) -> tuple[list[Span], list[Span]]:
    """``(reads, writes)`` of ``ins`` on the accelerator's storage (conservative ranges) and
    on external memory (``DRAM``: LOADs read it, STOREs write it)."""
    op = ins.op
    ext = dram_span(ins, g)
    if op == Op.LOAD:
        t = Target(ins["target"])
        rows, rl, spad = ins["rows"], ins["row_lines"], ins["spad_addr"]
        if t in (Target.A, Target.B):
            n = _ceil(rows, g.rows if t == Target.A else g.cols) * rl
        else:
            n = rows * rl
        w = [Span(t.name, spad, spad + n)]
        if t == Target.V:
            w.append(_v_port(spad, n, g))
        reads = [ext] if ext else []
        if t == Target.A:
            reads.append(A_PORT)
        elif t == Target.B:
            w.append(B_PORT)
        elif t == Target.P:
            w.append(P_PORT)
        return reads, w
    if op == Op.STORE:
        t = Target(ins["target"])
        reads = [Span(t.name, ins["spad_addr"], ins["spad_addr"] + ins["rows"] * ins["row_lines"])]
        if ins.get("dst_a"):
            w = store_row_words(g, t, ins["row_lines"], 1 << ins["ebytes_log2"])
            return reads + [A_PORT], [Span("A", ins["a_addr"], ins["a_addr"] + _ceil(ins["rows"], g.rows) * w)]
        return reads, [ext] if ext else []
    if op == Op.GEMM:
        mt, nt = ins["m_tiles"], ins["n_tiles"]
        if mt == 0 or nt == 0 or ins["k_beats"] == 0:
            return [], []
        out_lines = mt * g.rows * nt
        p_lines = (_ceil(mt * g.rows, g.cols) if ins["row_params"] else
                   _ceil(out_lines, 2) if ins["bias_per_row"] and ins["bias_pairs"] else
                   _ceil(out_lines, 4) if ins["bias_per_row"] and ins["bias_quads"] else
                   out_lines if ins["bias_per_row"] else nt)
        reads = [Span("A", ins["a_addr"], ins["a_addr"] + mt * ins["a_row_lines"]),
                 Span("B", ins["b_addr"], ins["b_addr"] + nt * ins["b_row_lines"]),
                 Span("P", ins["p_addr"], ins["p_addr"] + p_lines)]
        if ins["lut"]:
            reads.append(Span("LUT_TABLE", 0, 1 << ins["lut_bits"]))
        return reads, [Span("O", ins["o_addr"], ins["o_addr"] + out_lines)]
    if op == Op.LAYERNORM:
        n = ins["rows"] * (ins["channels"] // g.lanes)
        return ([Span("V", ins["src"], ins["src"] + n), Span("LN_CONST", 0, ins["channels"])],
                [Span("V", ins["dst"], ins["dst"] + n), _v_port(ins["dst"], n, g)])
    if op == Op.SOFTMAX:
        n = ins["rows"] * _ceil(ins["length"], g.lanes)
        src = (Span("O", ins["src"], ins["src"] + ins["rows"] * ins["src_row_lines"]) if ins.get("src_o", 0)
               else Span("V", ins["src"], ins["src"] + n))
        if ins.get("dst_a", 0):
            a = ins["a_addr"]
            return [src], [Span("A", a, a + _ceil(ins["rows"], g.rows) * _ceil(ins["length"], g.lanes)), A_PORT]
        return [src], [Span("V", ins["dst"], ins["dst"] + n), _v_port(ins["dst"], n, g)]
    if op == Op.LUT:
        n = ins["lines"]
        return ([Span("V", ins["src"], ins["src"] + n), Span("LUT_TABLE", 0, 1 << ins["lut_bits"])],
                [Span("V", ins["dst"], ins["dst"] + n), _v_port(ins["dst"], n, g)])
    if op == Op.MOVE:
        n = ins["rows"] * ins["dst_row_lines"]
        return ([Span("O", ins["src"], ins["src"] + ins["rows"] * ins["src_row_lines"])],
                [Span("V", ins["dst"], ins["dst"] + n), _v_port(ins["dst"], n, g)])
    if op == Op.RESIDUAL_ADD:
        n = ins["lines"]
        return ([Span("V", ins["src_a"], ins["src_a"] + n), Span("V", ins["src_b"], ins["src_b"] + n),
                 Span("RES_CONST", 0, ins["channels"])],
                [Span("V", ins["dst"], ins["dst"] + n), _v_port(ins["dst"], n, g)])
    return [], []


def _any_overlap(xs: Sequence[Span], ys: Sequence[Span]) -> bool:
    return any(x.overlaps(y) for x in xs for y in ys)


def spans_conflict(ra: Sequence[Span], wa: Sequence[Span], rb: Sequence[Span], wb: Sequence[Span]) -> bool:
    """True when reads/writes ``(ra, wa)`` and ``(rb, wb)`` conflict (RAW, WAR or WAW)."""
    return _any_overlap(wa, rb) or _any_overlap(ra, wb) or _any_overlap(wa, wb)


def conflicts(a: Instruction, b: Instruction, g: Geometry) -> bool:
    """True when ``a`` and ``b`` must not run at the same time (RAW, WAR, WAW, a V write half or
    A's write port)."""
    return spans_conflict(*accesses(a, g), *accesses(b, g))


def in_flight(engine: Engine) -> int:
    """How many of an engine's latest instructions may still be running: two for the GEMM
    engine (it takes the next GEMM while the previous one drains), one for the others."""
    return 2 if engine == Engine.GEMM else 1


class Running(Generic[T]):
    """Per engine, the latest instructions (as any key: the instruction, an index) that may
    still be running when the next one issues; :meth:`wait_mask` is the ``wait`` field the
    next instruction needs."""

    def __init__(self):
        self.latest: dict[Engine, list[T]] = {}

    def record(self, ins: Instruction, key: T) -> None:
        eng = instr_engine(ins)
        if eng is not None and not empty_gemm(ins):   # the engine does not count a GEMM without tiles
            self.latest[eng] = (self.latest.get(eng, []) + [key])[-in_flight(eng):]

    def wait_mask(self, engine: Engine | None, conflicts_with: Callable[[T], bool]) -> int:
        """The engines ``engine``'s next instruction must wait for (bit ``e``), or only the
        older GEMM still draining (:data:`~vit2hw.isa.WAIT_OLDER_GEMM`)."""
        mask = 0
        if engine is None:
            return mask
        for other, keys in self.latest.items():
            if other == engine:
                continue
            if conflicts_with(keys[-1]):
                mask |= 1 << int(other)
            elif any(conflicts_with(k) for k in keys[:-1]):
                mask |= WAIT_OLDER_GEMM
        return mask


def assign_waits(instructions: Sequence[Instruction], g: Geometry) -> list[Instruction]:
    """``instructions`` with every ``wait`` field set to the engines each must wait for."""
    running: Running[Instruction] = Running()
    out = []
    for ins in instructions:
        mask = running.wait_mask(instr_engine(ins), lambda prev: conflicts(ins, prev, g))
        running.record(ins, ins)
        out.append(ins.with_wait(mask) if ins.get("wait") != mask else ins)
    return out
