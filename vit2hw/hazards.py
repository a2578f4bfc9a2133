"""Which on-chip storage each instruction touches, and the ``wait`` masks that follow.

The accelerator's four engines (DMA, GEMM, vector, weight DMA; :class:`vit2hw.isa.Engine`) run
concurrently while the sequencer issues instructions in program order, each once its own
engine is free. An instruction must therefore also wait for another engine when that
engine's *latest* instruction (the only one of it that can still be running: an engine
runs one instruction at a time, and every earlier one of it finished before the latest
started; the GEMM engine's latest two, as it takes a GEMM while the previous one drains)
touches the same storage with at least one of the two writing, or when both write
the same half of the V scratchpad (one write port per half). :func:`assign_waits` sets exactly those bits;
:func:`conflicts` is the test both it and the timing checks in the tests use.

Storage is described as half-open line ranges per space (:class:`Span`): the scratchpads
A, B, O, V, P (lines; A and B over all banks), the three constant memories (entries), and
the pseudo-space ``VWRITE`` for V's two write ports (V is stored as two halves, lines
below ``ceil(v_depth/2)`` and the rest, each with one write port: ``VWRITE`` 0 / 1), and
external memory (``DRAM``, bytes): the weight DMA's LOADs (e.g. of keys into B) may read what
a STORE of the DMA engine is still writing. Instruction fetches are not tracked: programs
never write their own instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vit2hw.isa import WAIT_OLDER_GEMM, Engine, Geometry, Instruction, Op, Target, instr_engine, store_row_words

__all__ = ["Span", "accesses", "conflicts", "spans_conflict", "assign_waits", "in_flight", "empty_gemm", "v_half_lines", "dram_span"]


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
        return [ext] if ext else [], w
    if op == Op.STORE:
        t = Target(ins["target"])
        reads = [Span(t.name, ins["spad_addr"], ins["spad_addr"] + ins["rows"] * ins["row_lines"])]
        if ins.get("dst_a"):
            w = store_row_words(g, t, ins["row_lines"], 1 << ins["ebytes_log2"])
            return reads, [Span("A", ins["a_addr"], ins["a_addr"] + _ceil(ins["rows"], g.rows) * w)]
        return reads, [ext] if ext else []
    if op == Op.GEMM:
        mt, nt = ins["m_tiles"], ins["n_tiles"]
        if mt == 0 or nt == 0 or ins["k_beats"] == 0:
            return [], []
        out_lines = mt * g.rows * nt
        p_lines = (_ceil(mt * g.rows, g.cols) if ins["row_params"] else
                   _ceil(out_lines, 2) if ins["bias_per_row"] and ins["bias_pairs"] else
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
    """True when ``a`` and ``b`` must not run at the same time (RAW, WAR, WAW or a V write half)."""
    return spans_conflict(*accesses(a, g), *accesses(b, g))


def empty_gemm(ins: Instruction) -> bool:
    """A GEMM that feeds no tile (a zero tile count or depth): it occupies no drain context."""
    return ins.op == Op.GEMM and not (ins["m_tiles"] and ins["n_tiles"] and ins["k_beats"])


def in_flight(engine: Engine) -> int:
    """How many of an engine's latest instructions may still be running: two for the GEMM
    engine (it takes the next GEMM while the previous one drains), one for the others."""
    return 2 if engine == Engine.GEMM else 1


def assign_waits(instructions: Sequence[Instruction], g: Geometry) -> list[Instruction]:
    """``instructions`` with every ``wait`` field set to the engines each must wait for."""
    last: dict[Engine, list[Instruction]] = {}
    out = []
    for ins in instructions:
        eng = instr_engine(ins)
        mask = 0
        if eng is not None:
            for other, prevs in last.items():
                if other == eng:
                    continue
                if conflicts(ins, prevs[-1], g):
                    mask |= 1 << int(other)
                elif other == Engine.GEMM and any(conflicts(ins, prev, g) for prev in prevs[:-1]):
                    mask |= WAIT_OLDER_GEMM    # only the GEMM still draining: not the latest
            if not empty_gemm(ins):        # the engine does not count a GEMM without tiles
                last[eng] = (last.get(eng, []) + [ins])[-in_flight(eng):]
        out.append(ins.with_wait(mask) if ins.get("wait") != mask else ins)
    return out
