"""Cycle model of the accelerator: exact cycles of every instruction and of a program.

The RTL executes instructions one after another (``hdl/controller.py``), so a program's
cycle count is the sum of its instructions' counts plus the final END. Each count is the
instruction fetch plus the engine's busy time, in closed form from the array / vector-unit
formulas below and the memory's read latency. The cocotb test of the top level
(``tests/test_hdl_top.py``) requires ``program_cycles`` to equal the RTL's ``cycles``
counter exactly, with a memory that is always ready and answers reads after exactly
``mem_latency`` cycles; with back-pressure the prediction is a lower bound.

Unit formulas
-------------
``tile_cycles``, ``layernorm_cycles``, ``softmax_cycles`` and ``vector_cycles`` are the pure
timing functions of the array and the vector-side units. The core package cannot import
``hdl`` (the dependency points the other way), so they are stated here, where the
scheduler needs them; ``tests/test_cyclemodel.py`` checks that they agree with the
functions of the same name in ``hdl/systolic.py``, ``hdl/layernorm.py``, ``hdl/softmax.py``
and ``hdl/vector.py`` for many shapes, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from vit2hw.intops import EXP_FRAC, PROB_MAX, PROB_RECIP_SHIFT
from vit2hw.isa import INSTR_BYTES, Geometry, GemmMode, Instruction, Op, Program, SoftmaxMode

__all__ = [
    "REQUANT_LATENCY", "tile_cycles", "layernorm_sqrt_bits", "layernorm_cycles", "softmax_cycles",
    "vector_cycles", "fetch_cycles", "instruction_cycles", "program_cycles", "DEFAULT_MEM_LATENCY",
]

DEFAULT_MEM_LATENCY = 1
#: requantizer pipeline depth (hdl.requant.REQUANT_LATENCY)
REQUANT_LATENCY = 4
_PE_LATENCY = 3
_LN_OUT_PIPELINE_DEPTH = 7
_LN_ROW_OVERHEAD = 1 + 1 + 1 + 17 + 1
_SM_EXP_PIPELINE_DEPTH = 4
_SM_CODE_PIPELINE_DEPTH = 2
#: uniform-mode reciprocal: one quotient bit per cycle (hdl.softmax.SM_RECIP_CYCLES)
_SM_RECIP_CYCLES = (PROB_MAX << (PROB_RECIP_SHIFT - EXP_FRAC)).bit_length()
_VECTOR_PIPELINE_DEPTH = 4


def tile_cycles(rows: int, cols: int, k: int, n_tiles: int = 1, mode: int = GemmMode.MUL8) -> int:
    """Array cycles of ``n_tiles`` back-to-back tiles of depth ``k``: first accepted beat to
    last output row, both inclusive (``beats = ceil(k/2)`` in packed mode)."""
    if rows < 1 or cols < 1 or n_tiles < 1 or k < 1:
        raise ValueError("rows, cols, k and n_tiles must be positive")
    beats = (k + 1) // 2 if int(mode) == GemmMode.PACKED else k
    return beats - 1 + (n_tiles - 1) * max(beats, rows) + rows + cols + _PE_LATENCY - 1 + rows


def layernorm_sqrt_bits(max_channels: int, in_bits: int = 8) -> int:
    xmax = 1 << (in_bits + 2)
    return ((max_channels * max_channels * xmax * xmax).bit_length() + 1) // 2


def layernorm_cycles(channels: int, rows: int = 1, lanes: int = 1, max_channels: int = 1024,
                     in_bits: int = 8) -> int:
    if channels % lanes or channels < 1:
        raise ValueError("channels must be a positive multiple of lanes")
    if rows < 1:
        return 0
    period = 2 * (channels // lanes) + layernorm_sqrt_bits(max_channels, in_bits) + _LN_ROW_OVERHEAD
    return rows * period + _LN_OUT_PIPELINE_DEPTH


def softmax_cycles(n: int, rows: int = 1, lanes: int = 1, mode: int = SoftmaxMode.LOG2) -> int:
    """Softmax unit cycles; the uniform mode adds the per-row reciprocal's divider steps."""
    if int(mode) not in (SoftmaxMode.LOG2, SoftmaxMode.UNIFORM):
        raise ValueError(f"unknown softmax mode {mode}")
    if n < 1:
        raise ValueError("row length must be positive")
    if rows < 1:
        return 0
    period = 3 * -(-n // lanes) + _SM_EXP_PIPELINE_DEPTH
    if int(mode) == SoftmaxMode.UNIFORM:
        period += _SM_RECIP_CYCLES
    return rows * period + _SM_CODE_PIPELINE_DEPTH


def vector_cycles(n_elems: int, lanes: int = 1) -> int:
    beats = -(-int(n_elems) // int(lanes))
    return 0 if beats == 0 else beats + _VECTOR_PIPELINE_DEPTH


def fetch_cycles(g: Geometry, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Controller cycles to fetch and decode one instruction (FETCH, the reads, EXEC)."""
    return INSTR_BYTES // g.bus_bytes + mem_latency + 3


def _engine_cycles(instr: Instruction, g: Geometry, lat: int) -> int:
    """Cycles the instruction's engine is busy (from the cycle after it starts)."""
    op = instr.op
    if op == Op.LOAD:
        words = instr["rows"] * instr["row_lines"] * g.words_per_line(instr["target"], 1 << instr["ebytes_log2"])
        return words + lat if words else 0
    if op == Op.STORE:
        return instr["rows"] * instr["row_lines"] * g.words_per_line(instr["target"], 1 << instr["ebytes_log2"])
    if op == Op.GEMM:
        t = instr["m_tiles"] * instr["n_tiles"]
        if t == 0 or instr["k_beats"] == 0:
            return 0
        return tile_cycles(g.rows, g.cols, instr["k_beats"], t) + REQUANT_LATENCY
    if op == Op.LAYERNORM:
        return 1 + layernorm_cycles(instr["channels"], instr["rows"], g.lanes, g.max_channels)
    if op == Op.SOFTMAX:
        return 1 + softmax_cycles(instr["length"], instr["rows"], g.lanes, instr.get("mode"))
    if op in (Op.LUT, Op.RESIDUAL_ADD):
        return 1 + vector_cycles(instr["lines"] * g.lanes, g.lanes)
    return 0


def instruction_cycles(instr: Instruction, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Cycles of one instruction, fetch included, on ``config`` (an ``AcceleratorConfig`` or a
    :class:`~vit2hw.isa.Geometry`) with a memory answering reads after ``mem_latency`` cycles."""
    g = config if isinstance(config, Geometry) else Geometry.from_config(config)
    if instr.op == Op.END:
        return fetch_cycles(g, mem_latency)
    if instr.op == Op.FENCE:
        return fetch_cycles(g, mem_latency)
    return fetch_cycles(g, mem_latency) + 1 + _engine_cycles(instr, g, mem_latency)


def program_cycles(program: Program, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> int:
    """Cycles the accelerator's ``cycles`` counter reports for ``program`` (through its END)."""
    g = config if isinstance(config, Geometry) else Geometry.from_config(config)
    total = 0
    for instr in program.instructions:
        total += instruction_cycles(instr, g, mem_latency)
        if instr.op == Op.END:
            return total
    return total + instruction_cycles(Instruction.make(Op.END), g, mem_latency)
