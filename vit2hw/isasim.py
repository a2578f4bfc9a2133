"""ISA interpreter: the functional model of the accelerator, instruction by instruction.

``run_program(program, config, memory)`` executes a :class:`vit2hw.isa.Program` on a
byte image of external memory exactly as ``docs/isa.md`` specifies each instruction:
the same scratchpads (banked A/B of bus-word lines, O and V lines of int32 lanes, P
lines of parameter records, the units' constant memories), the same addressing, and
every arithmetic step through :mod:`vit2hw.intops` (the RTL's scoreboard functions).
It is fast (numpy; GEMMs through the exact BLAS path of ``intops``), so a whole
scheduled network runs in Python in seconds and must reproduce the reference
executor bit for bit; the RTL must in turn reproduce this model.

Lanes a unit does not define (rows/columns of a partial tile, lanes past a row's
length) hold whatever the hardware computes on the padding; nothing the scheduler
stores depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vit2hw import intops as I
from vit2hw.isa import (LN_RECORD, LUT_RECORD, PARAM_RECORD, RECORD_BYTES, RES_RECORD, Geometry, unpack_quad_records,
                        GemmMode, Instruction, Op, Program, Target, store_words_written)

__all__ = ["MachineState", "IsaSimError", "new_memory", "execute", "run_program"]


class IsaSimError(RuntimeError):
    """An instruction addressed memory or a scratchpad outside its bounds."""


def _low_signed(x: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` of each value, read as two's complement (what a unit's input port sees)."""
    mask = (1 << bits) - 1
    v = np.asarray(x, np.int64) & mask
    return np.where(v >> (bits - 1), v - (1 << bits), v)


@dataclass
class MachineState:
    """Scratchpads and constant memories of one accelerator."""
    g: Geometry
    a: np.ndarray = field(init=False)       # [rows banks, depth, bus bytes] uint8
    b: np.ndarray = field(init=False)
    o: np.ndarray = field(init=False)       # [depth, cols] int64
    v: np.ndarray = field(init=False)       # [depth, lanes] int64
    p: np.ndarray = field(init=False)       # [depth, cols] PARAM_RECORD
    ln: np.ndarray = field(init=False)
    res: np.ndarray = field(init=False)
    lut: np.ndarray = field(init=False)

    def __post_init__(self):
        g = self.g
        self.a = np.zeros((g.rows, g.a_depth, g.bus_bytes), np.uint8)
        self.b = np.zeros((g.cols, g.b_depth, g.bus_bytes), np.uint8)
        self.o = np.zeros((g.o_depth, g.cols), np.int64)
        self.v = np.zeros((g.v_depth, g.lanes), np.int64)
        self.p = np.zeros((g.p_depth, g.cols), PARAM_RECORD)
        self.ln = np.zeros(g.max_channels, LN_RECORD)
        self.res = np.zeros(g.max_channels, RES_RECORD)
        self.lut = np.zeros(256, LUT_RECORD)


def new_memory(size: int) -> bytearray:
    return bytearray(size)


def _span(n: int, depth: int, what: str, lo: int = 0) -> None:
    if lo < 0 or lo + n > depth:
        raise IsaSimError(f"{what}: lines {lo}..{lo + n} outside depth {depth}")


def _ext_rows(mem: np.ndarray, addr: int, stride: int, rows: int, nbytes: int) -> np.ndarray:
    """``rows`` × ``nbytes`` bytes of external memory, row ``i`` at ``addr + i·stride``."""
    end = addr + (rows - 1) * stride + nbytes
    if rows and (addr < 0 or end > len(mem)):
        raise IsaSimError(f"external access [{addr:#x}, {end:#x}) outside memory of {len(mem)} bytes")
    idx = addr + np.arange(rows)[:, None] * stride + np.arange(nbytes)[None, :]
    return mem[idx]


def _lane_bytes(vals: np.ndarray, ebytes: int) -> np.ndarray:
    """int lanes [..., n] → their low ``ebytes`` bytes, little-endian [..., n·ebytes]."""
    v = np.asarray(vals, np.int64)
    parts = [(v >> (8 * i)) & 0xFF for i in range(ebytes)]
    return np.stack(parts, axis=-1).reshape(*v.shape[:-1], v.shape[-1] * ebytes).astype(np.uint8)


def _bytes_to_lanes(raw: np.ndarray, ebytes: int) -> np.ndarray:
    """little-endian bytes [..., n·ebytes] → sign-extended ints [..., n]."""
    r = raw.astype(np.int64).reshape(*raw.shape[:-1], -1, ebytes)
    v = sum(r[..., i] << (8 * i) for i in range(ebytes))
    return _low_signed(v, 8 * ebytes)


def _load(st: MachineState, mem: np.ndarray, ins: Instruction) -> None:
    g = st.g
    t = Target(ins["target"])
    eb = 1 << ins["ebytes_log2"]
    rows, rl, spad = ins["rows"], ins["row_lines"], ins["spad_addr"]
    wpl = g.words_per_line(t, eb)
    raw = _ext_rows(mem, ins["ext_addr"], ins["ext_stride"], rows, rl * wpl * g.bus_bytes)
    if t in (Target.A, Target.B):
        banks, pad = (g.rows, st.a) if t == Target.A else (g.cols, st.b)
        _span(_ceil(rows, banks) * rl, pad.shape[1], f"LOAD {t.name}", spad)
        lines = raw.reshape(rows, rl, g.bus_bytes)
        for i in range(rows):
            base = spad + (i // banks) * rl
            pad[i % banks, base:base + rl] = lines[i]
    elif t == Target.V:
        _span(rows * rl, g.v_depth, "LOAD V", spad)
        st.v[spad:spad + rows * rl] = _bytes_to_lanes(raw.reshape(rows * rl, g.lanes * eb), eb)
    elif t == Target.P:
        _span(rows * rl, g.p_depth, "LOAD P", spad)
        st.p[spad:spad + rows * rl] = np.ascontiguousarray(raw).view(PARAM_RECORD).reshape(rows * rl, g.cols)
    elif t in (Target.LN_CONST, Target.RES_CONST, Target.LUT_TABLE):
        dst, dt = {Target.LN_CONST: (st.ln, LN_RECORD), Target.RES_CONST: (st.res, RES_RECORD),
                   Target.LUT_TABLE: (st.lut, LUT_RECORD)}[t]
        _span(rows, len(dst), f"LOAD {t.name}", spad)
        dst[spad:spad + rows] = np.ascontiguousarray(raw[:, :RECORD_BYTES]).view(dt).reshape(rows)
    else:
        raise IsaSimError(f"LOAD into {t.name} is not allowed")


def _store(st: MachineState, mem: np.ndarray, ins: Instruction) -> None:
    g = st.g
    t = Target(ins["target"])
    eb = 1 << ins["ebytes_log2"]
    rows, rl, spad, n_el = ins["rows"], ins["row_lines"], ins["spad_addr"], ins["row_elems"]
    if t == Target.O:
        src, lanes = st.o, g.cols
    elif t == Target.V:
        src, lanes = st.v, g.lanes
    else:
        raise IsaSimError(f"STORE from {t.name} is not allowed")
    _span(rows * rl, len(src), f"STORE {t.name}", spad)
    wpl = g.words_per_line(t, eb)
    line_bytes = wpl * g.bus_bytes
    data = _lane_bytes(src[spad:spad + rows * rl], eb)                   # [rows·rl, lanes·eb]
    padded = np.zeros((rows * rl, line_bytes), np.uint8)
    padded[:, :lanes * eb] = data
    padded = padded.reshape(rows, rl * line_bytes)
    # byte offsets of the elements < row_elems inside a stored row
    e = np.arange(min(n_el, rl * lanes))
    offs = ((e // lanes) * line_bytes + (e % lanes) * eb)[:, None] + np.arange(eb)[None, :]
    offs = offs.reshape(-1)
    if ins.get("dst_a"):
        # the words go into A as a LOAD of them would place them; cleared bytes of a written
        # word are zero, and the row's trailing words without an element are not written
        words = rl * wpl
        written = store_words_written(g, t, rl, n_el, eb)
        row = np.zeros((rows, rl * line_bytes), np.uint8)
        row[:, offs] = padded[:, offs]
        _rows_into_a(st, ins["a_addr"], row.reshape(rows, words, g.bus_bytes)[:, :written], words, "STORE into A")
        return
    base = ins["ext_addr"] + np.arange(rows)[:, None] * ins["ext_stride"]
    idx = base + offs[None, :]
    if rows and offs.size and (idx.min() < 0 or idx.max() >= len(mem)):
        raise IsaSimError(f"STORE [{int(idx.min()):#x}, {int(idx.max()):#x}] outside memory")
    mem[idx] = padded[:, offs]


def _rows_into_a(st: MachineState, a0: int, lines: np.ndarray, pitch: int, what: str) -> None:
    """Row ``i``'s A lines ``lines[i]`` ([rows, n, bus bytes]) into bank ``i % rows_of_array``
    from line ``a0 + (i // rows_of_array)·pitch``, as a LOAD of the rows into A places them."""
    g = st.g
    rows = lines.shape[0]
    _span(_ceil(rows, g.rows) * pitch, st.a.shape[1], what, a0)
    for i in range(rows):
        base = a0 + (i // g.rows) * pitch
        st.a[i % g.rows, base:base + lines.shape[1]] = lines[i]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _operand(pad: np.ndarray, base: int, tiles: int, row_lines: int, k_beats: int, wb: int) -> np.ndarray:
    """Bytes streamed for ``tiles`` tiles: [tiles·banks, k_beats] (tile t from line base + t·row_lines)."""
    banks = pad.shape[0]
    k = np.arange(k_beats)
    out = np.empty((tiles, banks, k_beats), np.uint8)
    for t in range(tiles):
        lines = base + t * row_lines + k // wb
        if lines.size and lines.max() >= pad.shape[1]:
            raise IsaSimError(f"GEMM reads line {int(lines.max())} beyond depth {pad.shape[1]}")
        out[t] = pad[:, lines, k % wb]
    return out.reshape(tiles * banks, k_beats)


def _gemm(st: MachineState, ins: Instruction) -> None:
    g = st.g
    R, C = g.rows, g.cols
    mt, nt, kb = ins["m_tiles"], ins["n_tiles"], ins["k_beats"]
    if mt == 0 or nt == 0 or kb == 0:
        return
    a = _operand(st.a, ins["a_addr"], mt, ins["a_row_lines"], kb, g.bus_bytes).astype(np.int64)
    b = _operand(st.b, ins["b_addr"], nt, ins["b_row_lines"], kb, g.bus_bytes).astype(np.int64)
    mode = GemmMode(ins["mode"])
    if mode == GemmMode.MUL8:
        x = a if ins["a_unsigned"] else _low_signed(a, 8)
        acc = I.int_gemm(x, _low_signed(b, 8).T, 8, 8, x_signed=not ins["a_unsigned"])
    elif mode == GemmMode.PACKED:
        if not g.int4_packing:
            raise IsaSimError("GEMM mode PACKED on an array built without int4_packing")
        lo = lambda v: _low_signed(v, 4)
        hi = lambda v: _low_signed(v >> 4, 4)
        acc = I.int_gemm(lo(a), lo(b).T, 4, 4) + I.int_gemm(hi(a), hi(b).T, 4, 4)
        acc = I.check_range(acc, 32, True, "packed accumulator")
    elif mode == GemmMode.SHIFT:
        acc = I.attn_v_shift(a & 0xF, _low_signed(b, 8).T, 8)
    else:
        raise IsaSimError(f"GEMM mode {int(mode)} unknown")
    # output row m (global within the instruction), column tile j → O line o_addr + m·nt + j
    m_idx = np.arange(mt * R)
    lines = ins["o_addr"] + m_idx[:, None] * nt + np.arange(nt)[None, :]          # [M, nt]
    if lines.max() >= g.o_depth:
        raise IsaSimError(f"GEMM writes O line {int(lines.max())} beyond depth {g.o_depth}")
    if ins["row_params"]:
        if nt != 1:
            raise IsaSimError("GEMM row_params with more than one column tile")
        p_lines = ins["p_addr"] + m_idx // C
    elif ins["bias_per_row"]:
        if ins["bias_pairs"] and R % 2:
            raise IsaSimError(f"GEMM bias_pairs on an array of {R} (odd) rows")
        if ins["bias_quads"] and R % 4:
            raise IsaSimError(f"GEMM bias_quads on an array of {R} rows (not a multiple of 4)")
        pair = 4 if ins["bias_quads"] else 2 if ins["bias_pairs"] else 1
        p_lines = ins["p_addr"] + (m_idx // pair)[:, None] * nt + np.arange(nt)[None, :]
    else:
        p_lines = np.broadcast_to(ins["p_addr"] + np.arange(nt)[None, :], (mt * R, nt))
    if p_lines.max() >= g.p_depth:
        raise IsaSimError(f"GEMM reads P line {int(p_lines.max())} beyond depth {g.p_depth}")
    if ins["row_params"]:                                                            # the row's record, every column
        rec = np.repeat(st.p[p_lines, m_idx % C][:, None], C, axis=1)
    else:
        rec = st.p[p_lines].reshape(mt * R, nt * C)                                 # per output element
    if ins["bias_per_row"] and ins["bias_quads"]:                                   # row 4i+k: the k-th bias
        q = unpack_quad_records(rec.view(np.uint8).reshape(mt * R, nt * C, RECORD_BYTES))
        bias = np.take_along_axis(q["bias"], (m_idx % 4)[:, None, None], axis=2)[..., 0]
        rec = {k: q[k] for k in ("m", "s", "zp")}
    else:
        bias = rec["bias"].astype(np.int64)
    if ins["bias_per_row"] and ins["bias_pairs"]:                                   # odd rows: bias1
        bias = np.where((m_idx % 2 == 1)[:, None], rec["bias1"].astype(np.int64), bias)
    acc_b = acc + bias
    if ins["bypass"]:
        y = I.check_range(acc_b, 32, True, "GEMM bypass output")
    else:
        y = I.requantize(acc, rec["m"].astype(np.int64), rec["s"].astype(np.int64), ins["out_bits"],
                         bool(ins["out_signed"]), rec["zp"].astype(np.int64), bias)
    if ins["lut"]:
        bits = ins["lut_bits"]
        y = I.apply_lut(y, st.lut["value"][:1 << bits].astype(np.int64), bits)
    st.o[lines.reshape(-1)] = y.reshape(mt * R, nt, C).reshape(-1, C)


def _vec_in(st: MachineState, src: int, n_lines: int, what: str) -> np.ndarray:
    _span(n_lines, st.g.v_depth, what, src)
    return st.v[src:src + n_lines]


def _vec_out(st: MachineState, dst: int, vals: np.ndarray, what: str) -> None:
    _span(len(vals), st.g.v_depth, what, dst)
    st.v[dst:dst + len(vals)] = vals


def _layernorm(st: MachineState, ins: Instruction) -> None:
    L = st.g.lanes
    rows, ch = ins["rows"], ins["channels"]
    lpr = ch // L
    x = _low_signed(_vec_in(st, ins["src"], rows * lpr, "LAYERNORM"), 8).reshape(rows, ch)
    k = st.ln[:ch]
    y = I.ptf_layernorm(x, k["alpha"].astype(np.int64), k["gm"].astype(np.int64), k["gs"].astype(np.int64),
                        k["bb"].astype(np.int64), ins["out_bits"], ins["out_zp"], in_bits=8)
    _vec_out(st, ins["dst"], y.reshape(rows * lpr, L), "LAYERNORM")


def _softmax(st: MachineState, ins: Instruction) -> None:
    L = st.g.lanes
    rows, n = ins["rows"], ins["length"]
    lpr = _ceil(n, L)
    if ins.get("src_o", 0):
        g, srl = st.g, ins["src_row_lines"]
        if g.cols % L or srl * g.cols < n:
            raise IsaSimError("SOFTMAX from O needs cols a multiple of lanes and enough O lines per row")
        _span(rows * srl, g.o_depth, "SOFTMAX (O)", ins["src"])
        t = _low_signed(st.o[ins["src"]:ins["src"] + rows * srl].reshape(rows, srl * g.cols)[:, :n], 16)
    else:
        t = _low_signed(_vec_in(st, ins["src"], rows * lpr, "SOFTMAX"), 16).reshape(rows, lpr * L)[:, :n]
    uniform = ins.get("mode", 0) == 1
    codes = (I.uniform_softmax if uniform else I.log_int_softmax)(t)
    out = np.full((rows, lpr * L), 0 if uniform else I.LOG2_ZERO_CODE, np.int64)
    out[:, :n] = codes
    if ins.get("dst_a", 0):
        # a beat's low bytes are one A line; row i's lines go to bank i % rows, as a STORE of
        # the V lines into A would place them
        g = st.g
        if L != g.bus_bytes:
            raise IsaSimError(f"SOFTMAX into A needs lanes ({L}) equal to the bus bytes ({g.bus_bytes})")
        _rows_into_a(st, ins["a_addr"], (out & 0xFF).astype(np.uint8).reshape(rows, lpr, L), lpr, "SOFTMAX into A")
        return
    _vec_out(st, ins["dst"], out.reshape(rows * lpr, L), "SOFTMAX")


def _lut(st: MachineState, ins: Instruction) -> None:
    bits = ins["lut_bits"]
    x = _low_signed(_vec_in(st, ins["src"], ins["lines"], "LUT"), bits)
    y = I.apply_lut(x, st.lut["value"][:1 << bits].astype(np.int64), bits)
    _vec_out(st, ins["dst"], y, "LUT")


def _residual(st: MachineState, ins: Instruction) -> None:
    L = st.g.lanes
    n, ch = ins["lines"], ins["channels"]
    a = _low_signed(_vec_in(st, ins["src_a"], n, "RESIDUAL_ADD"), 16)
    b = _low_signed(_vec_in(st, ins["src_b"], n, "RESIDUAL_ADD"), 16)
    chan = ((np.arange(n) % (ch // L)) * L)[:, None] + np.arange(L)[None, :]
    k = st.res[chan]
    y = I.residual_add(a, b, k["ma"].astype(np.int64), k["mb"].astype(np.int64), k["bias"].astype(np.int64),
                       k["s"].astype(np.int64), ins["out_bits"], ins["out_zp"])
    _vec_out(st, ins["dst"], y, "RESIDUAL_ADD")


_EXEC = {Op.LOAD: _load, Op.STORE: _store}
def _move(st: MachineState, ins: Instruction) -> None:
    g = st.g
    rows, srl, drl = ins["rows"], ins["src_row_lines"], ins["dst_row_lines"]
    if g.cols % g.lanes or drl > srl * (g.cols // g.lanes):
        raise IsaSimError("MOVE: rows need cols a multiple of lanes and enough O lines")
    _span(rows * srl, g.o_depth, "MOVE (O)", ins["src"])
    src = st.o[ins["src"]:ins["src"] + rows * srl].reshape(rows, srl * g.cols)
    _vec_out(st, ins["dst"], src[:, :drl * g.lanes].reshape(rows * drl, g.lanes), "MOVE")


_COMPUTE = {Op.GEMM: _gemm, Op.MOVE: _move, Op.LAYERNORM: _layernorm, Op.SOFTMAX: _softmax, Op.LUT: _lut,
            Op.RESIDUAL_ADD: _residual}


def execute(st: MachineState, mem: np.ndarray, ins: Instruction) -> bool:
    """Run one instruction; ``False`` at END."""
    if ins.op == Op.END:
        return False
    if ins.op in _EXEC:
        _EXEC[ins.op](st, mem, ins)
    elif ins.op in _COMPUTE:
        _COMPUTE[ins.op](st, ins)
    elif ins.op != Op.FENCE:
        raise IsaSimError(f"unknown opcode {ins.op}")
    return True


def run_program(program: Program, config, memory: bytearray | None = None, mem_size: int | None = None,
                load_segments: bool = True) -> bytearray:
    """Execute ``program`` to END on ``memory`` (a bytearray, modified in place and returned;
    a fresh zeroed one of ``mem_size`` bytes if not given). The program's segments are
    written first unless ``load_segments`` is False."""
    g = config if isinstance(config, Geometry) else Geometry.from_config(config)
    if memory is None:
        memory = bytearray(mem_size or 0)
    mem = np.frombuffer(memory, np.uint8)
    if load_segments:
        for seg in program.segments:
            mem[seg.addr:seg.addr + len(seg.data)] = np.frombuffer(seg.data, np.uint8)
    st = MachineState(g)
    for ins in program.instructions:
        if not execute(st, mem, ins):
            break
    return memory

