"""Accelerator top level: hand-built programs run through the external memory model.

Each program is assembled with ``vit2hw.isa.Assembler``; its expected outputs come from
``vit2hw.intops`` (the scoreboard) and its expected cycle count from
``vit2hw.cyclemodel.program_cycles``. The cocotb bench (``sim/tb_top.py``) loads the program
and data into ``sim.memory.MemoryModel``, runs the RTL to END and compares every output
byte and the ``cycles`` counter. Also: Verilog lint and deterministic emission.
"""

from __future__ import annotations

import dataclasses

import json
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pytest

from hdl.config import AcceleratorConfig
from hdl.emit import write_verilog
from hdl.top import Accelerator
from sim.runner import run_cocotb
from vit2hw import intops as I
from vit2hw.cyclemodel import program_cycles, timeline
from vit2hw.isa import (LN_RECORD, LUT_RECORD, PARAM_RECORD, RES_RECORD, WAIT_OLDER_GEMM, Assembler, Engine,
                        Geometry, GemmMode, Op, Program, SoftmaxMode, Target, instr_engine, pack_quad_records,
                        pack_records, pack_rows, store_row_words, store_words_written, unpack_rows)

SMALL = AcceleratorConfig(name="small4x4", rows=4, cols=4, vector_lanes=4, act_buf_bytes=4 * 4 * 64,
                          weight_buf_bytes=4 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                          max_tokens=32, max_channels=32)
DATA = 0x1000
MEM_SIZE = 0x8000


@dataclass
class Case:
    """One program plus the outputs it must produce."""
    name: str
    program: Program
    checks: list[dict] = field(default_factory=list)

    def expect(self, what: str, addr: int, values: np.ndarray, ebytes: int, row_bytes: int,
               signed: bool = True) -> None:
        self.checks.append({"what": what, "addr": addr, "rows": int(values.shape[0]),
                            "cols": int(values.shape[1]), "ebytes": ebytes, "row_bytes": row_bytes,
                            "signed": signed, "expected": np.asarray(values).tolist()})


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class Layout:
    """Bump allocator over external memory, bus-word aligned."""

    def __init__(self, start: int = DATA, align: int = 16):
        self.next, self.align = start, align

    def take(self, n: int) -> int:
        addr = self.next
        self.next += _ceil(n, self.align) * self.align
        return addr


def _param_lines(g: Geometry, n: int, bias, m, s, zp, bias1=0) -> tuple[bytes, int]:
    """P lines for ``n`` output columns: one line of ``cols`` records per column tile (``bias1``:
    the second row's bias of a ``bias_pairs`` line)."""
    nt = _ceil(n, g.cols)
    cols = nt * g.cols
    pad = lambda v: np.concatenate([np.broadcast_to(np.asarray(v, np.int64), (n,)), np.zeros(cols - n, np.int64)])
    return pack_records(PARAM_RECORD, cols, bias=pad(bias), m=pad(m), s=pad(s), zp=pad(zp), bias1=pad(bias1)), nt


def _gemm_setup(g: Geometry, asm: Assembler, mem: Layout, rng, m: int, k: int, n: int,
                mode: GemmMode = GemmMode.MUL8, out_ebytes: int = 1, bias_per_row: bool = False,
                lut_bits: int = 0, row_params: bool = False, bias_pairs: bool = False,
                a_sp: int = 0, b_sp: int = 0, p_sp: int = 0, bias_quads: bool = False):
    """Operands, parameters and expected result of one GEMM (see :func:`gemm_case`): the data
    is placed in external memory, LOADed into A/B/P from lines ``a_sp``/``b_sp``/``p_sp``.
    Returns ``(want, gemm_fields, out_addr, out_row, nt)``; ``gemm_fields`` lack ``o_addr``."""
    wb = g.bus_bytes
    if mode == GemmMode.SHIFT:
        x = rng.integers(0, 16, (m, k))                      # log2 codes, 15 = zero
        w = rng.integers(-128, 128, (k, n))
        acc = I.attn_v_shift(x, w, 8)
        a_bytes, k_beats = x, k
    elif mode == GemmMode.PACKED:
        x = rng.integers(-8, 8, (m, k))
        w = rng.integers(-8, 8, (k, n))
        acc = I.int_gemm(x, w, 4, 4)
        k_beats = _ceil(k, 2)
        pad = lambda a: np.pad(a, ((0, 0), (0, 2 * k_beats - k)))
        xp, wp = pad(x), pad(w.T)
        a_bytes = (xp[:, 0::2] & 15) | ((xp[:, 1::2] & 15) << 4)
        w_bytes = (wp[:, 0::2] & 15) | ((wp[:, 1::2] & 15) << 4)
    else:
        x = rng.integers(-128, 128, (m, k))
        w = rng.integers(-128, 128, (k, n))
        acc = I.int_gemm(x, w, 8, 8)
        a_bytes, k_beats = x, k
    if mode != GemmMode.PACKED:
        w_bytes = w.T
    mt, nt = _ceil(m, g.rows), _ceil(n, g.cols)
    bias_per_row = bias_per_row or bias_pairs or bias_quads
    bias = rng.integers(-5000, 5000, (mt * g.rows, n) if bias_per_row else n)
    out_bits = lut_bits or 8 * out_ebytes
    scale = max(1, int(np.abs(acc).max()))
    target = 100.0 if out_ebytes == 1 else 20000.0
    per = mt * g.rows if row_params else n
    mult, shift = I.choose_multiplier(np.full(per, target / scale) * rng.uniform(0.5, 1.5, per), max_shift=40)
    zp = rng.integers(-3, 4, per)
    if row_params:
        bias = rng.integers(-5000, 5000, per)
        want = I.requantize(acc, mult[:m, None], shift[:m, None], out_bits, True, zp[:m, None], bias[:m, None])
    elif out_ebytes == 4:
        want = acc + bias[:m]if bias_per_row else acc + bias
    else:
        want = I.requantize(acc, mult, shift, out_bits, True, zp, bias[:m] if bias_per_row else bias)
    if lut_bits:
        step = 4.0 / (1 << (lut_bits - 1))
        table = I.build_lut(lambda v: 0.5 * v * (1 + np.tanh(0.79788456 * (v + 0.044715 * v ** 3))),
                            lut_bits, step, 0, 16, step / 64)
        want = I.apply_lut(want, table, lut_bits)
        ta = mem.take(len(table) * 16)
        asm.data(ta, pack_records(LUT_RECORD, len(table), value=table), "table")
        asm.load_const(Target.LUT_TABLE, ta, len(table))

    lines = _ceil(k_beats, wb)
    xa = mem.take(m * lines * wb)
    asm.data(xa, pack_rows(a_bytes, 1, lines * wb), "x")
    wa = mem.take(n * lines * wb)
    asm.data(wa, pack_rows(w_bytes, 1, lines * wb), "w")
    if row_params:
        p_lines = _ceil(per, g.cols)
        params = _param_lines(g, per, bias, mult, shift, zp)[0]
    elif bias_pairs:
        params = b"".join(_param_lines(g, n, bias[i], mult, shift, zp, bias1=bias[i + 1])[0]
                          for i in range(0, mt * g.rows, 2))
        p_lines = mt * g.rows // 2 * nt
    elif bias_quads:
        pad = lambda v: np.pad(np.broadcast_to(np.asarray(v, np.int64), (n,)), (0, nt * g.cols - n))
        params = b"".join(pack_quad_records(np.stack([pad(bias[i + k]) for k in range(4)]), pad(mult), pad(shift),
                                            pad(zp)) for i in range(0, mt * g.rows, 4))
        p_lines = mt * g.rows // 4 * nt
    elif bias_per_row:
        params = b"".join(_param_lines(g, n, row, mult, shift, zp)[0] for row in bias)
        p_lines = mt * g.rows * nt
    else:
        params, p_lines = _param_lines(g, n, bias, mult, shift, zp)
    pa = mem.take(len(params))
    asm.data(pa, params, "params")
    out_row = nt * g.words_per_line(Target.O, out_ebytes) * wb
    ya = mem.take(m * out_row)

    asm.load(Target.A, xa, m, lines, a_sp)
    asm.load(Target.B, wa, n, lines, b_sp)
    asm.load(Target.P, pa, p_lines, 1, p_sp)
    fields = dict(m=m, n=n, k_beats=k_beats, a_addr=a_sp, b_addr=b_sp, p_addr=p_sp, out_bits=min(out_bits, 32),
                  mode=mode, bypass=out_ebytes == 4, bias_per_row=bias_per_row, lut_bits=lut_bits,
                  row_params=row_params, bias_pairs=bias_pairs, bias_quads=bias_quads)
    return want, fields, ya, out_row, nt


def gemm_case(cfg, rng, m: int, k: int, n: int, mode: GemmMode = GemmMode.MUL8, name: str = "gemm",
              out_ebytes: int = 1, bias_per_row: bool = False, lut_bits: int = 0,
              row_params: bool = False, forward_softmax: bool = False,
              softmax_from_o: SoftmaxMode | None = None, bias_pairs: bool = False,
              bias_quads: bool = False) -> Case:
    """Y = requant(X @ W + bias) tiled over the array; M, K, N need not be multiples of it.

    ``out_ebytes`` 1/2 requantizes to int8/int16; 4 is the bypass (raw int32 ``acc + bias``).
    ``bias_per_row`` uses one bias per output element (P line per row and column tile);
    ``bias_pairs`` packs two rows to a P line (the odd row's bias in ``bias1``).
    ``lut_bits``: requantize to that many bits and look every code up in a GELU table
    (loaded into LUT_TABLE) on the way into O; the int16 values are stored.
    ``row_params``: one requantization record per output row (``n`` ≤ cols), ``cols`` to a P line.
    ``forward_softmax``: int16 scores MOVEd from O into V (no STORE/LOAD), log2 softmax there;
    both the moved scores and the codes are stored and checked.
    ``softmax_from_o``: int16 scores normalized by a SOFTMAX that reads them in O (no MOVE)
    in that mode; the scores (from O) and the probabilities (from V) are stored and checked."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    want, fields, ya, out_row, nt = _gemm_setup(g, asm, mem, rng, m, k, n, mode, out_ebytes, bias_per_row,
                                                lut_bits, row_params, bias_pairs, bias_quads=bias_quads)
    wb = g.bus_bytes
    asm.gemm(o_addr=0, **fields)
    if softmax_from_o is not None:
        lpr = _ceil(n, g.lanes)
        c_row = lpr * g.words_per_line(Target.V, 1) * wb
        ca = mem.take(m * c_row)
        asm.softmax(0, 0, m, n, softmax_from_o, src_row_lines=nt)
        asm.store(Target.O, ya, m, nt, 0, row_elems=n, ebytes=out_ebytes)
        asm.store(Target.V, ca, m, lpr, 0, row_elems=n, ebytes=1)
        case = Case(name, asm.end())
        case.expect("scores", ya, want, out_ebytes, out_row)
        probs = I.uniform_softmax(want) if softmax_from_o == SoftmaxMode.UNIFORM else I.log_int_softmax(want)
        case.expect("probabilities", ca, probs, 1, c_row, signed=softmax_from_o == SoftmaxMode.UNIFORM)
        return case
    if forward_softmax:
        lpr = _ceil(n, g.lanes)
        v_row = lpr * g.words_per_line(Target.V, 2) * wb
        c_row = lpr * g.words_per_line(Target.V, 1) * wb
        ca = mem.take(m * c_row)
        asm.move(0, 0, m, nt, lpr)
        asm.softmax(0, m * lpr, m, n)
        asm.store(Target.V, ya, m, lpr, 0, row_elems=n, ebytes=2)
        asm.store(Target.V, ca, m, lpr, m * lpr, row_elems=n, ebytes=1)
        case = Case(name, asm.end())
        case.expect("moved", ya, want, 2, v_row)
        case.expect("codes", ca, I.log_int_softmax(want), 1, c_row, signed=False)
        return case
    asm.store(Target.O, ya, m, nt, 0, row_elems=n, ebytes=out_ebytes)
    case = Case(name, asm.end())
    case.expect("Y", ya, want, out_ebytes, out_row)
    return case


def back_to_back_gemms_case(cfg, rng) -> Case:
    """Six GEMMs issued back to back, each taken while the one before drains: different K
    (one below the rows, one of a single beat), output formats (int16, int8 with paired-row
    biases, per-row parameters, raw int32, four rows' biases to a P line followed by paired
    ones) and parameter layouts, each in its own A/B/P/O lines. The first result's STORE comes after the second GEMM, so it waits only for the
    older GEMM (``WAIT_OLDER_GEMM``); the others come after the last GEMM."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    specs = [dict(m=6, k=9, n=7, out_ebytes=2), dict(m=7, k=2, n=4, bias_pairs=True),
             dict(m=11, k=7, n=3, row_params=True), dict(m=4, k=1, n=5, out_ebytes=4),
             dict(m=9, k=3, n=4, bias_quads=True), dict(m=3, k=2, n=3, bias_pairs=True)]
    a_sp = b_sp = p_sp = o_sp = 0
    done = []
    for spec in specs:
        want, fields, ya, out_row, nt = _gemm_setup(g, asm, mem, rng, a_sp=a_sp, b_sp=b_sp, p_sp=p_sp, **spec)
        m, lines = spec["m"], _ceil(fields["k_beats"], g.bus_bytes)
        mt = _ceil(m, g.rows)
        done.append((want, fields, ya, out_row, nt, o_sp, spec.get("out_ebytes", 1)))
        a_sp += mt * lines
        b_sp += _ceil(spec["n"], g.cols) * lines
        p_sp += (_ceil(mt * g.rows, g.cols) if spec.get("row_params")
                 else mt * g.rows // 2 * nt if spec.get("bias_pairs")
                 else mt * g.rows // 4 * nt if spec.get("bias_quads") else nt)
        o_sp += mt * g.rows * nt
    assert a_sp <= g.a_depth and b_sp <= g.b_depth and p_sp <= g.p_depth and o_sp <= g.o_depth

    def store(i):
        want, fields, ya, out_row, nt, o, eb = done[i]
        asm.store(Target.O, ya, fields["m"], nt, o, row_elems=fields["n"], ebytes=eb)

    for i, (_, fields, _, _, _, o, _) in enumerate(done):
        asm.gemm(o_addr=o, **fields)
        if i == 1:
            store(0)
    for i in range(1, len(done)):
        store(i)
    case = Case("back_to_back_gemms", asm.end())
    for i, (want, fields, ya, out_row, nt, o, eb) in enumerate(done):
        case.expect(f"Y{i}", ya, want, eb, out_row)
    return case


def weights_on_dma_case(cfg, rng) -> Case:
    """Two GEMMs whose B and P lines come over both DMA engines (the LOAD's ``on_dma`` bit):
    the DMA engine loads GEMM 1's B while the weight DMA loads its P, then GEMM 2's P while
    the weight DMA loads its B, which must first wait for the DMA engine's LOAD into B (one
    write port). Returns the case; its LOADs are in that order after the A LOADs."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    specs = [dict(m=7, k=13, n=6, bias_pairs=True), dict(m=5, k=9, n=7)]
    sp = dict(a_sp=0, b_sp=0, p_sp=0)
    done, loads = [], []
    for spec in specs:
        want, fields, ya, out_row, nt = _gemm_setup(g, asm, mem, rng, **sp, **spec)
        # _gemm_setup ends with the LOADs of A, B and P: take them out and re-emit them below
        loads.append(asm.program.instructions[-3:])
        del asm.program.instructions[-3:]
        done.append((want, fields, ya, out_row, nt))
        lines = _ceil(fields["k_beats"], g.bus_bytes)
        sp = dict(a_sp=sp["a_sp"] + _ceil(spec["m"], g.rows) * lines, b_sp=sp["b_sp"] + nt * lines,
                  p_sp=sp["p_sp"] + (_ceil(spec["m"], g.rows) * g.rows // 2 * nt if spec.get("bias_pairs") else nt))
    (a1, b1, p1), (a2, b2, p2) = loads
    for ins, on_dma in ((a1, 0), (a2, 0), (p1, 0), (b1, 1), (b2, 0), (p2, 1)):
        asm.emit(Op.LOAD, **{**dict(ins.args), "on_dma": on_dma})
    o_sp = 0
    for want, fields, ya, out_row, nt in done:
        asm.gemm(o_addr=o_sp, **fields)
        o_sp += _ceil(fields["m"], g.rows) * g.rows * nt
    o_sp = 0
    for want, fields, ya, out_row, nt in done:
        asm.store(Target.O, ya, fields["m"], nt, o_sp, row_elems=fields["n"])
        o_sp += _ceil(fields["m"], g.rows) * g.rows * nt
    case = Case("weights_on_dma", asm.end())
    for i, (want, fields, ya, out_row, nt) in enumerate(done):
        case.expect(f"Y{i}", ya, want, 1, out_row)
    return case


def layernorm_case(cfg, rng, rows: int, channels: int) -> Case:
    """PTF LayerNorm of int8 rows from V to V (constants through LOAD LN_CONST)."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    q = rng.integers(-128, 128, (rows, channels))
    q[0] = rng.integers(-3, 3, channels)                        # a low-variance row
    alpha = rng.integers(0, 4, channels)
    gm = rng.integers(2000, 20000, channels)
    gs = rng.integers(10, 16, channels)
    bb = rng.integers(-(1 << 20), 1 << 20, channels)
    want = I.ptf_layernorm(q, alpha, gm, gs, bb, 8, 0, in_bits=8)
    lpr = channels // g.lanes
    row_bytes = lpr * g.words_per_line(Target.V, 1) * g.bus_bytes
    qa = mem.take(rows * row_bytes)
    asm.data(qa, pack_rows(q, 1, row_bytes), "q")
    ca = mem.take(channels * 16)
    asm.data(ca, pack_records(LN_RECORD, channels, gm=gm, alpha=alpha, gs=gs, bb=bb), "ln")
    ya = mem.take(rows * row_bytes)
    asm.load_const(Target.LN_CONST, ca, channels)
    asm.load(Target.V, qa, rows, lpr, 0, ebytes=1)
    asm.layernorm(0, rows * lpr, rows, channels, out_bits=8)
    asm.store(Target.V, ya, rows, lpr, rows * lpr, row_elems=channels, ebytes=1)
    case = Case("layernorm", asm.end())
    case.expect("LN", ya, want, 1, row_bytes)
    return case


def softmax_case(cfg, rng, rows: int, length: int) -> Case:
    """Log-Int-Softmax of int16 score rows (length not a multiple of the lanes) to 4-bit codes."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    t = np.clip(np.rint(rng.normal(0, 400, (rows, length))), -32768, 32767).astype(np.int64)
    t[-1, 0] = 32767                                              # one dominant score
    want = I.log_int_softmax(t)
    lpr = _ceil(length, g.lanes)
    in_row = lpr * g.words_per_line(Target.V, 2) * g.bus_bytes
    out_row = lpr * g.words_per_line(Target.V, 1) * g.bus_bytes
    ta = mem.take(rows * in_row)
    asm.data(ta, pack_rows(t, 2, in_row), "scores")
    ya = mem.take(rows * out_row)
    asm.load(Target.V, ta, rows, lpr, 0, ebytes=2)
    asm.softmax(0, rows * lpr, rows, length)
    asm.store(Target.V, ya, rows, lpr, rows * lpr, row_elems=length, ebytes=1)
    case = Case("softmax", asm.end())
    case.expect("codes", ya, want, 1, out_row, signed=False)
    return case


def uniform_attention_case(cfg, rng, rows: int, length: int, n: int, on_chip: bool | str = False) -> Case:
    """Uniform softmax of int16 scores to probabilities 0..127, stored, then loaded as the A
    operand of a multiply-mode P·V GEMM (int8 V, requantized to int8): both results checked.
    ``on_chip``: the probabilities reach A by a STORE into A instead of through memory;
    ``"softmax"``: the SOFTMAX writes them into A itself (only P·V is checked: V never holds
    them)."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    wb = g.bus_bytes
    t = np.clip(np.rint(rng.normal(0, 600, (rows, length))), -32768, 32767).astype(np.int64)
    t[0] = 0                                                      # a flat row: every p equal
    t[-1, 1] = 32767                                              # one dominant score
    probs = I.uniform_softmax(t)
    v = rng.integers(-128, 128, (length, n))
    acc = I.int_gemm(probs, v, 8, 8)
    mult, shift = I.choose_multiplier(np.full(n, 100.0 / max(1, int(np.abs(acc).max()))), max_shift=40)
    bias = rng.integers(-500, 500, n)
    want = I.requantize(acc, mult, shift, 8, True, 0, bias)

    lpr = _ceil(length, g.lanes)
    in_row = lpr * g.words_per_line(Target.V, 2) * wb
    p_row = lpr * g.words_per_line(Target.V, 1) * wb
    k_lines = _ceil(length, wb)
    assert k_lines * wb <= p_row
    nt = _ceil(n, g.cols)
    out_row = nt * g.words_per_line(Target.O, 1) * wb
    ta = mem.take(rows * in_row)
    asm.data(ta, pack_rows(t, 2, in_row), "scores")
    va = mem.take(n * k_lines * wb)
    asm.data(va, pack_rows(v.T, 1, k_lines * wb), "v_t")
    params, p_lines = _param_lines(g, n, bias, mult, shift, 0)
    pa = mem.take(len(params))
    asm.data(pa, params, "params")
    pr = mem.take(rows * p_row)
    ya = mem.take(rows * out_row)

    asm.load(Target.V, ta, rows, lpr, 0, ebytes=2)
    # A line 1 on: the probabilities' first line is not line 0 of a bank
    asm.softmax(0, rows * lpr, rows, length, mode=SoftmaxMode.UNIFORM, a_addr=1 if on_chip == "softmax" else None)
    if on_chip != "softmax":
        asm.store(Target.V, pr, rows, lpr, rows * lpr, row_elems=length, ebytes=1)
    a_row = None
    if on_chip == "softmax":
        a_row = lpr
    elif on_chip:
        a_row = store_row_words(g, Target.V, lpr)
        asm.store_to_a(Target.V, rows, lpr, rows * lpr, row_elems=length, a_addr=1)
    else:
        asm.load(Target.A, pr, rows, k_lines, 1, ext_stride=p_row)
    asm.load(Target.B, va, n, k_lines, 0)
    asm.load(Target.P, pa, p_lines, 1, 0)
    asm.gemm(rows, n, length, a_addr=1, b_addr=0, o_addr=0, p_addr=0, out_bits=8, mode=GemmMode.MUL8,
             a_row_lines=a_row)
    asm.store(Target.O, ya, rows, nt, 0, row_elems=n, ebytes=1)
    case = Case({False: "uniform_pv", True: "uniform_pv_on_chip", "softmax": "uniform_pv_softmax_into_a"}[on_chip],
                asm.end())
    if on_chip != "softmax":
        case.expect("probs", pr, probs, 1, p_row)
    case.expect("PV", ya, want, 1, out_row)
    return case


def chained_gemm_case(cfg, rng, m: int, k: int, n1: int, n2: int, whole_rows: bool = False) -> Case:
    """Z = requant(requant(X @ W1) @ W2) with the int8 intermediate Y going from O into A by a
    STORE into A (no memory round trip; A lines behind X's); Y and Z are both checked, Z
    over a sentinel that must survive past column ``n2``. With ``whole_rows`` the second
    GEMM reads every word of Y's STOREd rows (K = their pitch in bytes) and A is filled
    first: the words the STORE skips (no element of Y in them) keep the filler, which
    enters Z."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    wb = g.bus_bytes
    nt1, nt2 = _ceil(n1, g.cols), _ceil(n2, g.cols)
    pitch = store_row_words(g, Target.O, nt1)          # A lines of one STOREd row of Y
    k2 = pitch * wb if whole_rows else n1
    x = rng.integers(-128, 128, (m, k))
    w1, w2 = rng.integers(-128, 128, (k, n1)), rng.integers(-128, 128, (k2, n2))
    filler = rng.integers(-128, 128, (m, pitch * wb))
    layers, acts = [], [x]
    for w in (w1, w2):
        a_in = acts[-1]
        if len(acts) == 2:                             # A's rows after the STORE into A
            written = store_words_written(g, Target.O, nt1, n1) * wb
            a_in = np.concatenate([a_in, np.zeros((m, written - n1), np.int64), filler[:, written:]], axis=1)[:, :k2]
        acc = I.int_gemm(a_in, w, 8, 8)
        n = w.shape[1]
        mult, shift = I.choose_multiplier(np.full(n, 100.0 / max(1, int(np.abs(acc).max()))), max_shift=40)
        bias, zp = rng.integers(-3000, 3000, n), rng.integers(-3, 4, n)
        acts.append(I.requantize(acc, mult, shift, 8, True, zp, bias))
        layers.append(_param_lines(g, n, bias, mult, shift, zp))
    mt = _ceil(m, g.rows)
    l1, l2 = _ceil(k, wb), _ceil(k2, wb)
    xa = mem.take(m * l1 * wb)
    asm.data(xa, pack_rows(x, 1, l1 * wb), "x")
    wa1, wa2 = mem.take(n1 * l1 * wb), mem.take(n2 * l2 * wb)
    asm.data(wa1, pack_rows(w1.T, 1, l1 * wb), "w1")
    asm.data(wa2, pack_rows(w2.T, 1, l2 * wb), "w2")
    pa1, pa2 = mem.take(len(layers[0][0])), mem.take(len(layers[1][0]))
    asm.data(pa1, layers[0][0], "p1")
    asm.data(pa2, layers[1][0], "p2")
    row1, row2 = (nt * g.words_per_line(Target.O, 1) * wb for nt in (nt1, nt2))
    ya, za = mem.take(m * row1), mem.take(m * row2)
    sentinel = rng.integers(-128, 128, (m, row2))
    asm.data(za, pack_rows(sentinel, 1, row2), "sentinel")
    a2, b2, o2 = mt * l1, _ceil(n1, g.cols) * l1, mt * g.rows * nt1
    asm.load(Target.A, xa, m, l1, 0)
    if whole_rows:
        fa = mem.take(m * pitch * wb)
        asm.data(fa, pack_rows(filler, 1, pitch * wb), "filler")
        asm.load(Target.A, fa, m, pitch, a2)
    asm.load(Target.B, wa1, n1, l1, 0)
    asm.load(Target.B, wa2, n2, l2, b2)
    asm.load(Target.P, pa1, nt1, 1, 0)
    asm.load(Target.P, pa2, nt2, 1, nt1)
    asm.gemm(m, n1, k, a_addr=0, b_addr=0, o_addr=0, p_addr=0, out_bits=8)
    asm.store_to_a(Target.O, m, nt1, 0, row_elems=n1, a_addr=a2)
    asm.store(Target.O, ya, m, nt1, 0, row_elems=n1, ebytes=1)
    asm.gemm(m, n2, k2, a_addr=a2, b_addr=b2, o_addr=o2, p_addr=nt1, out_bits=8, a_row_lines=pitch)
    asm.store(Target.O, za, m, nt2, o2, row_elems=n2, ebytes=1)
    case = Case("chained_gemm_whole_rows" if whole_rows else "chained_gemm", asm.end())
    case.expect("Y", ya, acts[1], 1, row1)
    case.expect("Z and the sentinel after it", za, np.concatenate([acts[2], sentinel[:, n2:]], axis=1), 1, row2)
    return case


def lut_case(cfg, rng, rows: int, channels: int) -> Case:
    """GELU-style table lookup of int8 codes (table through LOAD LUT_TABLE), int16 results."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    table = I.build_lut(lambda v: 0.5 * v * (1 + np.tanh(0.79788456 * (v + 0.044715 * v ** 3))),
                        8, 0.05, 0, 16, 0.001)
    q = rng.integers(-128, 128, (rows, channels))
    lpr = _ceil(channels, g.lanes)
    in_row = lpr * g.words_per_line(Target.V, 1) * g.bus_bytes
    out_row = lpr * g.words_per_line(Target.V, 2) * g.bus_bytes
    ta = mem.take(256 * 16)
    asm.data(ta, pack_records(LUT_RECORD, 256, value=table), "table")
    qa = mem.take(rows * in_row)
    asm.data(qa, pack_rows(q, 1, in_row), "q")
    ya = mem.take(rows * out_row)
    asm.load_const(Target.LUT_TABLE, ta, 256)
    asm.load(Target.V, qa, rows, lpr, 0, ebytes=1)
    asm.lut(0, rows * lpr, rows * lpr, lut_bits=8)
    asm.store(Target.V, ya, rows, lpr, rows * lpr, row_elems=channels, ebytes=2)
    case = Case("lut", asm.end())
    case.expect("gelu", ya, I.apply_lut(q, table, 8), 2, out_row)
    return case


def residual_case(cfg, rng, rows: int, channels: int) -> Case:
    """Residual add of two int16 tensors with per-channel constants, int8 output."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
    a = rng.integers(-30000, 30000, (rows, channels))
    b = rng.integers(-30000, 30000, (rows, channels))
    ma, mb = rng.integers(-20000, 20000, channels), rng.integers(-20000, 20000, channels)
    bias = rng.integers(-(1 << 30), 1 << 30, channels)
    s = rng.integers(18, 26, channels)
    want = I.residual_add(a, b, ma, mb, bias, s, 8, 0)
    lpr = channels // g.lanes
    in_row = lpr * g.words_per_line(Target.V, 2) * g.bus_bytes
    out_row = lpr * g.words_per_line(Target.V, 1) * g.bus_bytes
    ca = mem.take(channels * 16)
    asm.data(ca, pack_records(RES_RECORD, channels, ma=ma, mb=mb, bias=bias, s=s), "res")
    aa, ba = mem.take(rows * in_row), mem.take(rows * in_row)
    asm.data(aa, pack_rows(a, 2, in_row), "a")
    asm.data(ba, pack_rows(b, 2, in_row), "b")
    ya = mem.take(rows * out_row)
    n = rows * lpr
    asm.load_const(Target.RES_CONST, ca, channels)
    asm.load(Target.V, aa, rows, lpr, 0, ebytes=2)
    asm.load(Target.V, ba, rows, lpr, n, ebytes=2)
    asm.residual_add(0, n, 2 * n, n, channels, out_bits=8)
    asm.store(Target.V, ya, rows, lpr, 2 * n, row_elems=channels, ebytes=1)
    case = Case("residual", asm.end())
    case.expect("sum", ya, want, 1, out_row)
    return case


def _run(tmp_path, cfg, cases: list[Case], latency: int = 1, ready_prob: float = 1.0,
         cycles: str = "equal"):
    src = write_verilog(Accelerator(cfg), "accel", tmp_path / "accel.v")
    specs = []
    for i, c in enumerate(cases):
        path = tmp_path / f"{c.name}.bin"
        path.write_bytes(c.program.to_bytes())
        specs.append({"name": c.name, "program": str(path), "mem_size": MEM_SIZE, "latency": latency,
                      "ready_prob": ready_prob, "seed": i, "checks": c.checks,
                      "expected_cycles": program_cycles(c.program, cfg, latency), "cycles_check": cycles})
    (tmp_path / "cases.json").write_text(json.dumps(specs))
    return run_cocotb([src], "accel", "sim.tb_top", tmp_path / "sim", params={"cases": str(tmp_path / "cases.json")})


def test_top_programs_bit_exact_and_cycles(tmp_path):
    """Tiled GEMM (M, K, N not multiples of 4x4), LayerNorm, log2 softmax and shift-mode P·V run
    from external memory equal intops bit for bit, and take exactly program_cycles cycles."""
    rng = np.random.default_rng(5)
    cases = [gemm_case(SMALL, rng, 10, 11, 7), layernorm_case(SMALL, rng, 3, 8),
             softmax_case(SMALL, rng, 3, 10), gemm_case(SMALL, rng, 6, 9, 5, GemmMode.SHIFT, "pv_shift")]
    _run(tmp_path, SMALL, cases)


def test_top_uniform_softmax_then_pv(tmp_path):
    """SOFTMAX mode=1 gives intops.uniform_softmax bit for bit (rows not a multiple of the lanes,
    a flat row, a one-hot row), a MUL8 GEMM on those probabilities gives the requantized P·V,
    and the program takes exactly program_cycles cycles (the uniform mode's divider included)."""
    rng = np.random.default_rng(21)
    _run(tmp_path, SMALL, [uniform_attention_case(SMALL, rng, 5, 11, 6)])


def test_softmax_mode_cycles_equal_hdl():
    """The cycle model's softmax cost follows hdl.softmax.softmax_cycles in both modes; rows
    overlap in four stages (one pass per row, not three, once rows are longer than the exp
    pipeline), and the uniform mode's divider costs its SM_RECIP_CYCLES once, plus per row
    only where it outlasts the pass (short rows)."""
    from hdl.softmax import SM_RECIP_CYCLES, softmax_cycles
    from vit2hw import cyclemodel as cm
    for lanes in (1, 4, 16):
        for rows in (0, 1, 3, 197):
            for n in (1, 5, 17, 197):
                for mode in SoftmaxMode:
                    assert cm.softmax_cycles(n, rows, lanes, mode) == softmax_cycles(n, rows, lanes, int(mode))
                beats = -(-n // lanes)
                extra = (cm.softmax_cycles(n, rows, lanes, SoftmaxMode.UNIFORM)
                         - cm.softmax_cycles(n, rows, lanes, SoftmaxMode.LOG2))
                if rows and beats > 4:
                    assert extra == SM_RECIP_CYCLES + (rows - 1) * max(0, SM_RECIP_CYCLES + 1 - beats)
                    assert cm.softmax_cycles(n, rows, lanes) == 2 * beats + 4 + 1 + (rows - 1) * beats + beats + 2


def _more_cases(rng) -> list[Case]:
    return [gemm_case(SMALL, rng, 5, 7, 6, GemmMode.PACKED, "gemm_int4"),
            gemm_case(SMALL, rng, 7, 2, 6, name="gemm_k_below_rows"),
            gemm_case(SMALL, rng, 6, 5, 9, name="scores_int16", out_ebytes=2),
            gemm_case(SMALL, rng, 5, 6, 7, name="bypass_int32", out_ebytes=4),
            gemm_case(SMALL, rng, 6, 8, 5, name="bias_per_row", bias_per_row=True),
            gemm_case(SMALL, rng, 7, 8, 9, name="bias_pairs", bias_pairs=True),
            gemm_case(SMALL, rng, 10, 2, 7, name="bias_pairs_k_below_rows", bias_pairs=True),
            lut_case(SMALL, rng, 2, 10), residual_case(SMALL, rng, 3, 8),
            gemm_case(SMALL, rng, 6, 9, 7, name="gemm_gelu8", out_ebytes=2, lut_bits=8),
            gemm_case(SMALL, rng, 5, 6, 4, name="gemm_table4", out_ebytes=2, lut_bits=4),
            gemm_case(SMALL, rng, 11, 7, 3, name="row_params", row_params=True)]


def test_top_more_ops_slow_memory(tmp_path):
    """Packed int4, K < rows, int16 and int32 (bypass) outputs, per-element bias (one row or
    two rows to a P line, the latter also with tiles draining back to back), per-row
    parameters (12 rows over 3 P lines), LUT, residual add and GEMMs with a fused 8-bit / 4-bit
    table lookup are bit-exact with a 3-cycle memory,
    and the cycle model still matches exactly."""
    _run(tmp_path, SMALL, _more_cases(np.random.default_rng(9)), latency=3)


def test_top_gemms_overlap_previous_drain(tmp_path):
    """A GEMM issues while the previous one drains (two drain contexts, each with its own O
    address, parameters and format) and a STORE waits only for the older GEMM: every result
    is bit-exact and the RTL takes exactly the modelled cycles, with a 1- and a 3-cycle memory.
    The program must really overlap, or the test would not exercise the contexts."""
    rng = np.random.default_rng(21)
    case = back_to_back_gemms_case(SMALL, rng)
    tl = timeline(case.program, SMALL)
    gemms = [i for i, ins in enumerate(tl.instructions) if ins.op == Op.GEMM]
    assert sum(tl.issue[b] < tl.finish[a] for a, b in zip(gemms, gemms[1:])) >= 2
    assert any(ins.get("wait") & WAIT_OLDER_GEMM for ins in tl.instructions)
    for latency, c in ((1, case), (3, back_to_back_gemms_case(SMALL, np.random.default_rng(22)))):
        (tmp_path / f"lat{latency}").mkdir()
        _run(tmp_path / f"lat{latency}", SMALL, [c], latency=latency)


def test_top_row_params_cross_p_lines_inside_a_tile(tmp_path):
    """Per-row parameters on a 6x4 array: a tile's rows span two P lines (4 records each) and
    drain on consecutive cycles, so every row must pick the next line's record the cycle it
    changes; also a plain GEMM and a fused table on the non-square array, cycles exact."""
    rect = AcceleratorConfig(name="rect6x4", rows=6, cols=4, vector_lanes=4, act_buf_bytes=6 * 4 * 64,
                             weight_buf_bytes=4 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    rng = np.random.default_rng(17)
    _run(tmp_path, rect, [gemm_case(rect, rng, 11, 7, 3, name="row_params", row_params=True),
                          gemm_case(rect, rng, 13, 9, 6),
                          gemm_case(rect, rng, 7, 5, 4, name="gemm_gelu8", out_ebytes=2, lut_bits=8)])


def test_top_scores_forwarded_to_softmax(tmp_path):
    """MOVE: int16 scores go from O into V on chip (rows of 13 and 9 scores, padding lanes
    dropped) and the softmax runs on them there; moved values and codes are bit-exact and the
    cycles equal the model. On 6x8 with 4 lanes an O line is two V lines (lane groups
    alternate); on 4x4 with 4 lanes one."""
    rect = AcceleratorConfig(name="rect6x8", rows=6, cols=8, vector_lanes=4, act_buf_bytes=6 * 4 * 64,
                             weight_buf_bytes=8 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    rng = np.random.default_rng(23)
    _run(tmp_path / "rect", rect, [gemm_case(rect, rng, 7, 10, 13, name="scores_move", out_ebytes=2,
                                             forward_softmax=True)])
    _run(tmp_path / "small", SMALL, [gemm_case(SMALL, rng, 6, 8, 9, name="scores_move", out_ebytes=2,
                                               forward_softmax=True)], latency=3)


def test_top_dsp_mac_array(tmp_path):
    """An accelerator whose PEs are DSP-slice MACs (int4_packing=False): tiled int8 GEMMs
    (signed, per-row parameters, fused table) and the shift-mode P·V are bit-exact and take
    exactly the modelled cycles; the array's timing is that of the packing PEs."""
    cfg = dataclasses.replace(SMALL, name="small4x4-mac", int4_packing=False)
    rng = np.random.default_rng(31)
    _run(tmp_path, cfg, [gemm_case(cfg, rng, 10, 11, 7), gemm_case(cfg, rng, 6, 9, 5, GemmMode.SHIFT, "pv_shift"),
                         gemm_case(cfg, rng, 11, 7, 3, name="row_params", row_params=True),
                         gemm_case(cfg, rng, 6, 9, 7, name="gemm_gelu8", out_ebytes=2, lut_bits=8)], latency=3)


def test_packed_gemm_refused_without_int4_packing():
    """A PACKED GEMM cannot be assembled, nor interpreted, for PEs built without the mode."""
    from vit2hw.isa import ProgramError
    from vit2hw.isasim import IsaSimError, run_program
    cfg = dataclasses.replace(SMALL, int4_packing=False)
    with pytest.raises(ProgramError, match="int4_packing"):
        gemm_case(cfg, np.random.default_rng(1), 5, 7, 6, GemmMode.PACKED, "gemm_int4")
    prog = gemm_case(SMALL, np.random.default_rng(1), 5, 7, 6, GemmMode.PACKED, "gemm_int4").program
    with pytest.raises(IsaSimError, match="int4_packing"):
        run_program(prog, cfg, mem_size=MEM_SIZE)


def test_top_softmax_reads_scores_in_o(tmp_path):
    """SOFTMAX with src_row_lines reads a GEMM's int16 scores where the array left them in O:
    on 6x8 with 4 lanes a row's beats alternate between the two lane groups of each O line
    and rows of 13 scores span two O lines; on 4x4 rows of 9 scores span three. Log2 and
    uniform probabilities are bit-exact and the cycles equal the model (a SOFTMAX from O
    costs what one from V does)."""
    rect = AcceleratorConfig(name="rect6x8", rows=6, cols=8, vector_lanes=4, act_buf_bytes=6 * 4 * 64,
                             weight_buf_bytes=8 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    rng = np.random.default_rng(41)
    _run(tmp_path / "rect", rect, [
        gemm_case(rect, rng, 7, 10, 13, name="scores_log2", out_ebytes=2, softmax_from_o=SoftmaxMode.LOG2),
        gemm_case(rect, rng, 11, 6, 13, name="scores_uniform", out_ebytes=2, softmax_from_o=SoftmaxMode.UNIFORM)])
    _run(tmp_path / "small", SMALL, [gemm_case(SMALL, rng, 6, 8, 9, name="scores_o", out_ebytes=2,
                                               softmax_from_o=SoftmaxMode.LOG2)], latency=3)


def test_top_store_into_a(tmp_path):
    """STORE with dst_a puts O or V rows into A on chip, where the next GEMM reads them: int8
    GEMM results chained into a second GEMM (6x8: an O line is two bus words; 4x4) and
    uniform probabilities as the A operand of P·V (4x8 with 8 lanes on a 32-bit bus: a V line
    is two A lines; 4x4), all bit-exact, with the cycles the model predicts (one word a cycle,
    as a STORE to a ready memory) even with a slow memory."""
    rect = AcceleratorConfig(name="rect6x8", rows=6, cols=8, vector_lanes=4, act_buf_bytes=6 * 4 * 64,
                             weight_buf_bytes=8 * 4 * 64, out_buf_bytes=32 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    wide = AcceleratorConfig(name="wide4x8", rows=4, cols=8, vector_lanes=8, act_buf_bytes=4 * 4 * 64,
                             weight_buf_bytes=8 * 4 * 64, out_buf_bytes=32 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    rng = np.random.default_rng(47)
    _run(tmp_path / "rect", rect, [chained_gemm_case(rect, rng, 11, 10, 14, 9)])
    _run(tmp_path / "wide", wide, [uniform_attention_case(wide, rng, 7, 19, 6, on_chip=True)], latency=3)
    _run(tmp_path / "small", SMALL, [chained_gemm_case(SMALL, rng, 9, 7, 11, 6),
                                     uniform_attention_case(SMALL, rng, 5, 11, 6, on_chip=True)], latency=2)


def test_top_softmax_into_a(tmp_path):
    """SOFTMAX with dst_a writes its probabilities into A (a beat to an A line, rows taking the
    banks in turn, from a line other than 0), where the P·V GEMM reads them: 9 rows on 4 banks
    (three line groups, the last partial) of 11 and of 16 probabilities (a partial and a whole
    last beat), P·V bit-exact and the cycles those of the model (no cycle more than a SOFTMAX
    into V), with a slow memory too."""
    rng = np.random.default_rng(59)
    cases = [uniform_attention_case(SMALL, rng, 9, 11, 6, on_chip="softmax"),
             uniform_attention_case(SMALL, rng, 9, 16, 5, on_chip="softmax")]
    cases[1].name += "_whole_beats"          # programs are written to files named after their case
    _run(tmp_path / "fast", SMALL, cases)
    _run(tmp_path / "slow", SMALL, cases[:1], latency=3)


def test_top_bias_quads(tmp_path):
    """GEMM bias_quads: output rows 4i .. 4i+3 take their 24-bit biases from one P line of
    PARAM_QUAD_RECORDs (m, s and an int8 zero point beside them), over row tiles and two
    column tiles, M not a multiple of four; bit-exact, cycles those of the model (the drain
    reads P as with paired biases), fast and slow memory. back_to_back_gemms_case also runs a
    quads GEMM draining straight into a paired-bias one."""
    rng = np.random.default_rng(67)
    cases = [gemm_case(SMALL, rng, 10, 11, 7, bias_quads=True, name="quads"),
             gemm_case(SMALL, rng, 13, 5, 4, bias_quads=True, name="quads_one_tile")]
    _run(tmp_path / "fast", SMALL, cases)
    _run(tmp_path / "slow", SMALL, cases[:1], latency=3)


def test_top_weights_over_both_dma_engines(tmp_path):
    """LOADs into B and P run on the DMA engine (``on_dma``) beside the weight DMA's LOADs into
    the other scratchpad, and wait for it when both would write B: the GEMMs' results are
    bit-exact and the cycles those of the model, with a fast and a slow memory. The model's
    timeline shows both overlaps and the wait, so the test covers what it names."""
    rng = np.random.default_rng(61)
    case = weights_on_dma_case(SMALL, rng)
    ins = case.program.instructions
    tl = timeline(case.program, SMALL)
    (p1, b1, b2, p2) = (2, 3, 4, 5)
    assert [instr_engine(ins[i]) for i in (p1, b1, b2, p2)] == [Engine.WDMA, Engine.DMA, Engine.WDMA, Engine.DMA]
    overlap = lambda i, j: tl.issue[i] < tl.finish[j] and tl.issue[j] < tl.finish[i]
    assert overlap(p1, b1) and overlap(b2, p2)
    assert ins[b2]["wait"] & (1 << Engine.DMA) and tl.issue[b2] >= tl.finish[b1]
    _run(tmp_path / "fast", SMALL, [case])
    _run(tmp_path / "slow", SMALL, [case], latency=3)


def test_top_store_stops_after_last_element(tmp_path):
    """A STORE spends a cycle only on a row's words up to the last one holding an element
    below row_elems (6x8, 32-bit bus: an O line is two words, so 9 of 16 columns take 3 of
    4 words, 13 take all 4). Into A the skipped word keeps the filler that the second GEMM
    then reads; in memory the bytes past row_elems keep the sentinel; results bit-exact and
    cycles equal to the model, which does not count the skipped words."""
    rect = AcceleratorConfig(name="rect6x8", rows=6, cols=8, vector_lanes=4, act_buf_bytes=6 * 4 * 64,
                             weight_buf_bytes=8 * 4 * 64, out_buf_bytes=32 * 64, mem_bus_bits=32,
                             max_tokens=32, max_channels=32)
    g = Geometry.from_config(rect)
    assert [store_words_written(g, Target.O, 2, n) for n in (16, 13, 12, 9, 8, 5, 1, 0)] == [4, 4, 3, 3, 2, 2, 1, 1]
    assert store_words_written(g, Target.V, 3, 9, 2) == 5     # int16 lanes: two a word
    # Y's 9 and Z's 10 of 16 columns: a word of each row skipped, into A and to memory
    assert store_words_written(g, Target.O, 2, 9) < 4 and store_words_written(g, Target.O, 2, 10) < 4
    rng = np.random.default_rng(53)
    _run(tmp_path, rect, [chained_gemm_case(rect, rng, 11, 10, 9, 10, whole_rows=True)], latency=2)


def test_store_into_a_interpreter_matches_memory_round_trip():
    """The ISA interpreter's STORE into A leaves A exactly as STORE to memory + LOAD of those
    rows would (bytes of elements past row_elems zero), and so does a SOFTMAX into A for the
    K steps the GEMM reads, so the P·V outputs agree; and the STORE into A touches no
    external memory (hazards) and moves no DRAM bytes."""
    from vit2hw.hazards import accesses, dram_span
    from vit2hw.isasim import run_program
    for on_chip in (False, True, "softmax"):
        case = uniform_attention_case(SMALL, np.random.default_rng(3), 5, 11, 6, on_chip=on_chip)
        mem = run_program(case.program, SMALL, mem_size=MEM_SIZE)
        for chk in case.checks:
            got = np.frombuffer(bytes(mem[chk["addr"]:chk["addr"] + chk["rows"] * chk["row_bytes"]]), np.uint8)
            got = got.reshape(chk["rows"], chk["row_bytes"])[:, :chk["cols"]].astype(np.int64)
            want = np.asarray(chk["expected"]) & 0xFF
            assert (got == want).all(), (on_chip, chk["what"])
    g = Geometry.from_config(SMALL)
    ins = Assembler(g).store_to_a(Target.V, 6, 3, 0, row_elems=11, a_addr=2)
    reads, writes = accesses(ins, g)
    assert dram_span(ins, g) is None and [w.space for w in writes] == ["A"]
    assert (writes[0].lo, writes[0].hi) == (2, 2 + 2 * 3)


def _interpret(case: Case, cfg) -> None:
    """Run ``case`` on the ISA interpreter and compare every output with its expected values."""
    from vit2hw.isasim import run_program
    mem = run_program(case.program, cfg, mem_size=MEM_SIZE)
    for chk in case.checks:
        eb = chk["ebytes"]
        raw = bytes(mem[chk["addr"]:chk["addr"] + chk["rows"] * chk["row_bytes"]])
        got = unpack_rows(raw, chk["rows"], chk["cols"], eb, chk["row_bytes"], chk["signed"])
        assert (got == np.asarray(chk["expected"])).all(), (case.name, chk["what"])


def test_interpreter_runs_bias_quads_and_weights_on_the_dma_engine():
    """The ISA interpreter gives the expected results for the programs the RTL tests above run
    with bias_quads (alone and draining into paired biases) and with LOADs into B and P on the
    DMA engine, so the reference the scheduler's programs are checked against covers them."""
    rng = np.random.default_rng(71)
    for case in (gemm_case(SMALL, rng, 10, 11, 7, bias_quads=True), back_to_back_gemms_case(SMALL, rng),
                 weights_on_dma_case(SMALL, rng)):
        _interpret(case, SMALL)


def test_top_back_pressure(tmp_path):
    """With a memory that is ready only 60 % of the cycles the results stay bit-exact and the
    cycle model is a lower bound."""
    rng = np.random.default_rng(13)
    cases = [gemm_case(SMALL, rng, 9, 13, 6), softmax_case(SMALL, rng, 2, 7), residual_case(SMALL, rng, 2, 8)]
    _run(tmp_path, SMALL, cases, latency=2, ready_prob=0.6, cycles="lower_bound")


@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")
@pytest.mark.parametrize("cfg", [SMALL, AcceleratorConfig(name="lint", rows=3, cols=5, vector_lanes=8,
                                                          act_buf_bytes=3 * 8 * 32, weight_buf_bytes=5 * 8 * 32,
                                                          out_buf_bytes=20 * 32, mem_bus_bits=64,
                                                          max_tokens=40, max_channels=64)],
                         ids=["4x4-bus32", "3x5-bus64"])
def test_top_verilator_lint(tmp_path, cfg):
    """verilator --lint-only reports no error on the generated top (warnings allowed)."""
    src = write_verilog(Accelerator(cfg), "accel", tmp_path / "accel.v")
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "--top-module", "accel", str(src)],
                          capture_output=True, text=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("%Error")]
    assert proc.returncode == 0 and not errors, "\n".join(errors[:20]) or proc.stderr[-2000:]


def _rtl_cli(argv):
    import argparse
    from vit2hw.cli_rtl import add_rtl_command
    parser = argparse.ArgumentParser(prog="vit2hw")
    add_rtl_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_rtl_command_is_deterministic(tmp_path):
    """Two `vit2hw rtl` runs of one config write byte-identical files (top, units, config.json)."""
    cfg_file = SMALL.save(tmp_path / "small.json")
    outs = []
    for run in ("a", "b"):
        assert _rtl_cli(["rtl", "--config", str(cfg_file), "--out", str(tmp_path / run)]) == 0
        outs.append({p.relative_to(tmp_path / run): p.read_bytes()
                     for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})
    assert outs[0] == outs[1]
    names = {str(p) for p in outs[0]}
    assert {"accelerator.v", "config.json", "units/softmax_unit.v", "units/requantized_array.v"} <= names
    assert b"module vit2hw_accelerator(" in outs[0][next(p for p in outs[0] if str(p) == "accelerator.v")]


@pytest.mark.parametrize("argv,msg", [
    (["--target", "nope"], "unknown accelerator preset"),
    (["--array", "4by4"], "not of the form RxC"),
    (["--target", "pynq-z2", "--array", "64x64"], "DSP"),
])
def test_rtl_command_rejects_bad_input(tmp_path, argv, msg):
    """Unknown targets, malformed shapes and arrays beyond the device raise one ValueError, writing nothing."""
    with pytest.raises(ValueError, match=msg):
        _rtl_cli(["rtl", *argv, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
