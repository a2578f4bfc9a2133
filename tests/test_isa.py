"""ISA: field tables, encode/decode, Program containers, assembler checks, cycle model parity.

The cycle-model parity tests pin ``vit2hw.cyclemodel``'s unit formulas to the functions of
the hdl modules they restate, so neither can change alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hdl.config import AcceleratorConfig
from vit2hw import cyclemodel as cm
from vit2hw.isa import (FIELDS, INSTR_BITS, INSTR_BYTES, OPCODE_BITS, PARAM_RECORD, RECORD_BYTES, Assembler, Geometry,
                        Instruction, Op, Program, ProgramError, Segment, Target, decode, encode,
                        field_offsets, pack_records, pack_rows, unpack_rows, WAIT_FIELD, WAIT_POS)

SMALL = AcceleratorConfig(name="small", rows=4, cols=4, vector_lanes=4, act_buf_bytes=1024,
                          weight_buf_bytes=1024, out_buf_bytes=1024, mem_bus_bits=32,
                          max_tokens=32, max_channels=32)


def test_every_opcode_fits_the_word():
    """Each opcode's fields follow the 8-bit opcode without gaps or overlap and end below the
    ``wait`` field, which every opcode has at the same position (the sequencer decodes it
    before knowing the opcode's layout)."""
    for op in Op:
        offs = field_offsets(op)
        pos = OPCODE_BITS
        for name, (off, f) in offs.items():
            if name == WAIT_FIELD.name:
                continue
            assert off == pos
            pos += f.bits
        assert pos <= WAIT_POS
        assert offs[WAIT_FIELD.name] == (WAIT_POS, WAIT_FIELD)
        assert WAIT_POS + WAIT_FIELD.bits <= INSTR_BITS


@st.composite
def instructions(draw):
    op = draw(st.sampled_from(list(Op)))
    vals = {}
    for f in FIELDS[op] + (WAIT_FIELD,):
        lo, hi = f.range
        vals[f.name] = draw(st.integers(lo, hi))
    return Instruction.make(op, **vals)


@settings(max_examples=300, deadline=None)
@given(instructions())
def test_encode_decode_round_trip(instr):
    """decode(encode(i)) == i for every field value in range, from int and from bytes."""
    word = encode(instr)
    assert 0 <= word < 1 << INSTR_BITS
    assert decode(word) == instr
    assert decode(word.to_bytes(INSTR_BYTES, "little")) == instr


def test_field_positions_are_the_documented_bits():
    """GEMM k_beats sits right after its 7 leading fields; a signed field is two's complement."""
    i = Instruction.make(Op.GEMM, k_beats=1)
    assert encode(i) == int(Op.GEMM) | 1 << (8 + 2 + 1 + 6 + 1 + 1 + 1 + 16 + 16)
    ln = Instruction.make(Op.LAYERNORM, out_zp=-1)
    assert encode(ln) >> (8 + 24 + 24 + 16 + 16 + 6) == 0xFFFF


def test_bad_instructions_are_rejected():
    """Unknown fields, out-of-range values, unknown opcodes and stray bits raise ProgramError."""
    with pytest.raises(ProgramError):
        Instruction.make(Op.LOAD, nonsense=1)
    with pytest.raises(ProgramError):
        Instruction.make(Op.LOAD, rows=1 << 16)
    with pytest.raises(ProgramError):
        Instruction.make(Op.LAYERNORM, out_zp=1 << 15)
    with pytest.raises(ProgramError):
        decode(0xEE)
    with pytest.raises(ProgramError):
        decode(int(Op.END) | 1 << 100)


def _program() -> Program:
    asm = Assembler(Geometry.from_config(SMALL), entry=0x40)
    asm.data(0x1000, bytes(range(40)), "x")
    asm.load(Target.A, 0x1000, 5, 2, 0)
    asm.gemm(5, 3, 7, 0, 0, 0, 0)
    asm.fence()
    p = asm.end()
    p.meta["model"] = "t"
    return p


def test_program_round_trips():
    """to_bytes/from_bytes and to_json/from_json reproduce the program exactly."""
    p = _program()
    assert Program.from_bytes(p.to_bytes()) == p
    assert Program.from_json(p.to_json()) == p
    assert p.to_bytes() == Program.from_bytes(p.to_bytes()).to_bytes()
    with pytest.raises(ProgramError):
        Program.from_bytes(p.to_bytes()[:-3])
    with pytest.raises(ProgramError):
        Program.from_bytes(b"XXXX" + p.to_bytes()[4:])


def test_program_image_places_code_and_rejects_overlap():
    """The image holds the code at entry (ending in END) and refuses overlapping segments."""
    p = _program()
    code = p.image()[0]
    assert code.addr == 0x40 and len(code.data) == INSTR_BYTES * len(p.instructions)
    assert decode(code.data[-INSTR_BYTES:]).op == Op.END
    p.segments.append(Segment(0x1010, b"12", "clash"))
    with pytest.raises(ProgramError):
        p.image()


def test_assembler_checks_alignment_and_capacity():
    """Unaligned external addresses and loads past a scratchpad's depth are refused."""
    asm = Assembler(Geometry.from_config(SMALL))
    with pytest.raises(ProgramError):
        asm.load(Target.A, 0x1002, 1, 1, 0)
    with pytest.raises(ProgramError):
        asm.load(Target.V, 0x1000, 100, 1, 0)
    with pytest.raises(ProgramError):
        asm.layernorm(0, 0, 1, 6, 8)


def test_softmax_into_a_checks_the_line_width_and_depth():
    """SOFTMAX into A needs a beat to fill one A line (lanes = bus bytes) and its rows to end
    inside A; the default preset's 16 lanes on an 8-byte bus are refused with that reason."""
    g = Geometry.from_config(SMALL)
    asm = Assembler(g)
    ins = asm.softmax(0, 0, 5, 11, a_addr=1)
    assert (ins["dst_a"], ins["a_addr"]) == (1, 1)
    last_ok = g.a_depth - 2 * 3                   # 5 rows on 4 banks: two line groups of 3 lines
    asm.softmax(0, 0, 5, 11, a_addr=last_ok)
    with pytest.raises(ProgramError, match="ends at line"):
        asm.softmax(0, 0, 5, 11, a_addr=last_ok + 1)
    wide = Assembler(Geometry.from_config(AcceleratorConfig()))
    with pytest.raises(ProgramError, match="fill one"):
        wide.softmax(0, 0, 4, 40, a_addr=0)
    assert wide.softmax(0, 0, 4, 40)["dst_a"] == 0


def test_records_and_rows_pack_little_endian():
    """pack_rows/unpack_rows round-trip padded rows; records are 16 bytes with fields in place."""
    x = np.array([[-1, 2, 300], [4, -5, -32768]])
    blob = pack_rows(x, 2, 8)
    assert len(blob) == 16 and blob[:2] == b"\xff\xff"
    assert np.array_equal(unpack_rows(blob, 2, 3, 2, 8), x)
    rec = pack_records(PARAM_RECORD, 1, bias=-2, m=3, s=4, zp=-5)
    assert rec[:4] == (-2).to_bytes(4, "little", signed=True) and rec[6] == 4 and rec[8:10] == b"\xfb\xff"
    with pytest.raises(ProgramError):
        pack_records(PARAM_RECORD, 1, m=1 << 15)


def test_quad_records_hold_four_24_bit_biases_and_refuse_what_does_not_fit():
    """A PARAM_QUAD_RECORD is 16 bytes: row k's bias in bytes 3k..3k+2 (24-bit two's
    complement), m, s and an int8 zero point after them; the extremes round-trip, a bias of
    ±2^23 or a zero point outside int8 is refused (the scheduler then keeps bias_pairs)."""
    from vit2hw.isa import pack_quad_records, quad_biases_fit, unpack_quad_records
    lim = 1 << 23
    bias = np.array([[-lim], [lim - 1], [-1], [5]])
    raw = pack_quad_records(bias, -3, 40, -128)
    assert len(raw) == RECORD_BYTES and raw[:3] == b"\x00\x00\x80" and raw[3:6] == b"\xff\xff\x7f"
    assert raw[12:14] == (-3).to_bytes(2, "little", signed=True) and raw[14] == 40 and raw[15] == 0x80
    got = unpack_quad_records(np.frombuffer(raw, np.uint8))
    assert got["bias"].tolist() == [-lim, lim - 1, -1, 5] and (got["m"], got["s"], got["zp"]) == (-3, 40, -128)
    assert quad_biases_fit(bias, [127]) and not quad_biases_fit([[lim]], 0) and not quad_biases_fit([[0]], [128])
    with pytest.raises(ProgramError, match="24-bit"):
        pack_quad_records(np.array([[lim], [0], [0], [0]]), 1, 1, 0)


def test_bias_quads_needs_per_row_biases_and_four_rows_to_a_line():
    """GEMM bias_quads is refused without bias_per_row, together with bias_pairs, or on an
    array whose rows are not a multiple of four (a tile's rows would split a line)."""
    asm = Assembler(Geometry.from_config(SMALL))
    kw = dict(a_addr=0, b_addr=0, o_addr=0, p_addr=0)
    assert asm.gemm(8, 4, 4, bias_per_row=True, bias_quads=True, **kw)["bias_quads"] == 1
    for bad in (dict(bias_quads=True), dict(bias_per_row=True, bias_pairs=True, bias_quads=True)):
        with pytest.raises(ProgramError, match="bias_quads"):
            asm.gemm(8, 4, 4, **bad, **kw)
    six = Assembler(Geometry.from_config(AcceleratorConfig(name="r6", rows=6, cols=4, vector_lanes=4,
                                                           act_buf_bytes=6 * 4 * 64, weight_buf_bytes=4 * 4 * 64,
                                                           out_buf_bytes=16 * 64, mem_bus_bits=32)))
    with pytest.raises(ProgramError, match="multiple of four"):
        six.gemm(6, 4, 4, bias_per_row=True, bias_quads=True, **kw)


def test_geometry_rejects_unsupported_buses():
    """Vector lines must be whole bus words and the bus at most 128 bits."""
    with pytest.raises(ValueError):
        Geometry.from_config(AcceleratorConfig(vector_lanes=4, mem_bus_bits=64))
    with pytest.raises(ValueError):
        Geometry.from_config(AcceleratorConfig(mem_bus_bits=256, vector_lanes=32))


# ------------------------------------------------------------------ cycle model parity

@pytest.mark.parametrize("rows,cols", [(1, 1), (4, 4), (3, 5), (16, 16), (25, 48)])
def test_tile_cycles_equal_hdl(rows, cols):
    from hdl.systolic import tile_cycles
    for k in (1, 2, 3, 7, 16, 33, 192):
        for t in (1, 2, 5):
            for mode in (0, 1, 2):
                assert cm.tile_cycles(rows, cols, k, t, mode) == tile_cycles(rows, cols, k, t, mode)


def test_vector_unit_formulas_equal_hdl():
    from hdl.layernorm import layernorm_cycles
    from hdl.softmax import softmax_cycles
    from hdl.vector import vector_cycles
    for lanes in (1, 4, 16):
        for rows in (0, 1, 3, 197):
            for mc in (32, 768, 1024):
                assert cm.layernorm_cycles(64, rows, lanes, mc) == layernorm_cycles(64, rows, lanes, mc)
            for n in (1, 5, 197):
                assert cm.softmax_cycles(n, rows, lanes) == softmax_cycles(n, rows, lanes)
        for n in (0, 1, 7, 768):
            assert cm.vector_cycles(n, lanes) == vector_cycles(n, lanes)
    from hdl.requant import REQUANT_LATENCY
    assert cm.REQUANT_LATENCY == REQUANT_LATENCY


def test_program_cycles_never_exceed_the_sequential_sum():
    """Overlapping engines can only save cycles: program_cycles ≤ Σ instruction_cycles (END
    included), and a load's latency adds per memory read burst."""
    p = _program()
    g = Geometry.from_config(SMALL)
    total = sum(cm.instruction_cycles(i, g, 2) for i in p.instructions)
    assert 0 < cm.program_cycles(p, SMALL, 2) <= total
    load = p.instructions[0]
    assert cm.instruction_cycles(load, g, 5) - cm.instruction_cycles(load, g, 1) == 2 * 4


def test_assembler_rejects_impossible_moves_and_fusions():
    """MOVE needs whole V lines per O line and enough O lines for its V lines; a fused table
    needs signed outputs of exactly its input width; row_params one column tile; bias_pairs
    per-row bias on an even number of array rows."""
    def geometry(cols):
        return Geometry.from_config(AcceleratorConfig(rows=4, cols=cols, vector_lanes=4, mem_bus_bits=32,
                                                      act_buf_bytes=4 * 4 * 16, weight_buf_bytes=cols * 4 * 16,
                                                      out_buf_bytes=cols * 4 * 64))
    odd = Assembler(geometry(6))
    with pytest.raises(ProgramError, match="multiple of the 4 vector lanes"):
        odd.move(0, 0, 1, 1, 1)
    asm = Assembler(geometry(8))
    asm.move(0, 0, 2, 1, 2)
    with pytest.raises(ProgramError, match="exceed"):
        asm.move(0, 0, 2, 1, 3)
    with pytest.raises(ProgramError, match="table lookup"):
        asm.gemm(4, 8, 8, 0, 0, 0, 0, out_bits=8, lut_bits=4)
    with pytest.raises(ProgramError, match="row_params"):
        asm.gemm(4, 16, 8, 0, 0, 0, 0, row_params=True)
    with pytest.raises(ProgramError, match="bias_pairs needs bias_per_row"):
        asm.gemm(4, 8, 8, 0, 0, 0, 0, bias_pairs=True)
    odd_rows = Assembler(Geometry.from_config(AcceleratorConfig(rows=3, cols=4, vector_lanes=4, mem_bus_bits=32,
                                                                act_buf_bytes=3 * 4 * 16, weight_buf_bytes=4 * 4 * 16,
                                                                out_buf_bytes=4 * 4 * 64)))
    with pytest.raises(ProgramError, match="even number of array rows"):
        odd_rows.gemm(3, 4, 8, 0, 0, 0, 0, bias_per_row=True, bias_pairs=True)
