"""Accelerator top level: hand-built programs run through the external memory model.

Each program is assembled with ``vit2hw.isa.Assembler``; its expected outputs come from
``vit2hw.intops`` (the scoreboard) and its expected cycle count from
``vit2hw.cyclemodel.program_cycles``. The cocotb bench (``sim/tb_top.py``) loads the program
and data into ``sim.memory.MemoryModel``, runs the RTL to END and compares every output
byte and the ``cycles`` counter. Also: Verilog lint and deterministic emission.
"""

from __future__ import annotations

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
from vit2hw.cyclemodel import program_cycles
from vit2hw.isa import (LN_RECORD, PARAM_RECORD, Assembler, Geometry, GemmMode, Program, Target,
                        pack_records, pack_rows)

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


def _param_lines(g: Geometry, n: int, bias, m, s, zp) -> tuple[bytes, int]:
    """P lines for ``n`` output columns: one line of ``cols`` records per column tile."""
    nt = _ceil(n, g.cols)
    cols = nt * g.cols
    pad = lambda v: np.concatenate([np.broadcast_to(np.asarray(v, np.int64), (n,)), np.zeros(cols - n, np.int64)])
    return pack_records(PARAM_RECORD, cols, bias=pad(bias), m=pad(m), s=pad(s), zp=pad(zp)), nt


def gemm_case(cfg, rng, m: int, k: int, n: int, mode: GemmMode = GemmMode.MUL8, name: str = "gemm") -> Case:
    """Y = requant(X @ W + bias) tiled over the array; M, K, N need not be multiples of it."""
    g = Geometry.from_config(cfg)
    asm, mem = Assembler(g), Layout()
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
    bias = rng.integers(-5000, 5000, n)
    scale = max(1, int(np.abs(acc).max()))
    mult, shift = I.choose_multiplier(np.full(n, 100.0 / scale) * rng.uniform(0.5, 1.5, n), max_shift=40)
    zp = rng.integers(-3, 4, n)
    want = I.requantize(acc, mult, shift, 8, True, zp, bias)

    lines = _ceil(k_beats, wb)
    xa = mem.take(m * lines * wb)
    asm.data(xa, pack_rows(a_bytes, 1, lines * wb), "x")
    wa = mem.take(n * lines * wb)
    asm.data(wa, pack_rows(w_bytes, 1, lines * wb), "w")
    params, nt = _param_lines(g, n, bias, mult, shift, zp)
    pa = mem.take(len(params))
    asm.data(pa, params, "params")
    out_row = nt * g.words_per_line(Target.O, 1) * wb
    ya = mem.take(m * out_row)

    asm.load(Target.A, xa, m, lines, 0)
    asm.load(Target.B, wa, n, lines, 0)
    asm.load(Target.P, pa, nt, 1, 0)
    asm.gemm(m, n, k_beats, a_addr=0, b_addr=0, o_addr=0, p_addr=0, out_bits=8, mode=mode)
    asm.store(Target.O, ya, m, nt, 0, row_elems=n, ebytes=1)
    case = Case(name, asm.end())
    case.expect("Y", ya, want, 1, out_row)
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


def _run(tmp_path, cfg, cases: list[Case], latency: int = 1, ready_prob: float = 1.0,
         check_cycles: bool = True):
    src = write_verilog(Accelerator(cfg), "accel", tmp_path / "accel.v")
    specs = []
    for i, c in enumerate(cases):
        path = tmp_path / f"{c.name}.bin"
        path.write_bytes(c.program.to_bytes())
        specs.append({"name": c.name, "program": str(path), "mem_size": MEM_SIZE, "latency": latency,
                      "ready_prob": ready_prob, "seed": i, "checks": c.checks,
                      "expected_cycles": program_cycles(c.program, cfg, latency) if check_cycles else None})
    (tmp_path / "cases.json").write_text(json.dumps(specs))
    return run_cocotb([src], "accel", "sim.tb_top", tmp_path / "sim", params={"cases": str(tmp_path / "cases.json")})


def test_top_programs_bit_exact_and_cycles(tmp_path):
    """Tiled GEMM (M, K, N not multiples of 4x4), LayerNorm, log2 softmax and shift-mode P·V run
    from external memory equal intops bit for bit, and take exactly program_cycles cycles."""
    rng = np.random.default_rng(5)
    cases = [gemm_case(SMALL, rng, 10, 11, 7), layernorm_case(SMALL, rng, 3, 8),
             softmax_case(SMALL, rng, 3, 10), gemm_case(SMALL, rng, 6, 9, 5, GemmMode.SHIFT, "pv_shift")]
    _run(tmp_path, SMALL, cases)
