"""Dependency waits between the concurrent engines (vit2hw.hazards) and the sequencer replay
(vit2hw.cyclemodel.timeline) they drive."""

from __future__ import annotations

import pytest

from hdl.config import AcceleratorConfig
from vit2hw import cyclemodel as cm
from vit2hw.hazards import accesses, conflicts
from vit2hw.isa import WAIT_OLDER_GEMM, Assembler, Engine, Geometry, Instruction, Op, Target

SMALL = AcceleratorConfig(name="small4x4", rows=4, cols=4, vector_lanes=4, act_buf_bytes=4 * 4 * 64,
                          weight_buf_bytes=4 * 4 * 64, out_buf_bytes=16 * 64, mem_bus_bits=32,
                          max_tokens=32, max_channels=32)
G = Geometry.from_config(SMALL)
DMA, GEMM, VEC, WDMA = (1 << int(e) for e in (Engine.DMA, Engine.GEMM, Engine.VECTOR, Engine.WDMA))


def _waits(build) -> list[int]:
    asm = Assembler(G)
    build(asm)
    return [i["wait"] for i in asm.end().instructions]


def test_gemm_waits_for_its_operand_load_and_store_for_the_gemm():
    """RAW: a GEMM reading freshly loaded A waits for the DMA engine; the STORE of its O lines
    waits for the GEMM engine; END waits for nothing (it waits for every engine anyway)."""
    def prog(asm):
        asm.load(Target.A, 0x100, 4, 2, 0)
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
        asm.store(Target.O, 0x400, 4, 1, 0, row_elems=4)
    assert _waits(prog) == [0, DMA, GEMM, 0]


def test_disjoint_halves_do_not_wait():
    """A LOAD into lines the running GEMM does not read carries no wait, and a STORE of O
    lines the latest GEMM does not write waits at most for the older GEMM, which may still be
    draining (``WAIT_OLDER_GEMM``), not for the latest: that is what lets DMA overlap compute.
    A STORE of lines neither GEMM writes waits for nothing."""
    def prog(asm):
        asm.load(Target.A, 0x100, 4, 2, 0)
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
        asm.load(Target.A, 0x200, 4, 2, 8)                       # other A lines
        asm.gemm(4, 4, 8, a_addr=8, b_addr=0, o_addr=4, p_addr=0)
        asm.store(Target.O, 0x400, 4, 1, 0, row_elems=4)        # the first GEMM's O lines
        asm.store(Target.O, 0x400, 4, 1, 8, row_elems=4)        # lines no GEMM writes
    assert _waits(prog) == [0, DMA, 0, DMA, WAIT_OLDER_GEMM, 0, 0]


def test_war_on_a_scratchpad_and_the_v_write_ports():
    """WAR: reloading A lines a GEMM still reads waits for it. V has one write port per half
    (lines below ceil(v_depth/2) and the rest): a LOAD into V waits for a running vector
    instruction that writes the same half, even on other lines, but not for one writing the
    other half."""
    half = -(-G.v_depth // 2)

    def prog(asm):
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
        asm.load(Target.A, 0x100, 4, 2, 0)
        asm.layernorm(0, 8, 2, 16, 8)                 # writes lines 8..15: low half
        asm.load(Target.V, 0x300, 2, 4, half)         # high half: runs beside it
        asm.load(Target.V, 0x300, 2, 4, 16)           # low half, other lines: waits
    assert _waits(prog) == [0, GEMM, 0, 0, VEC, 0]


def test_softmax_into_a_and_the_dma_engine_share_a_write_port():
    """A has one write port: a LOAD into A and a STORE into A wait for a running SOFTMAX into A
    even on other A lines, and a SOFTMAX into A waits for a running LOAD into A; a SOFTMAX into
    V runs beside a LOAD into A, and the DMA engine's writers of A (one at a time anyway) do
    not depend on each other through the port."""
    from vit2hw.reorder import depends

    def prog(asm):
        asm.softmax(0, 0, 4, 8, a_addr=0)                        # A lines 0..1
        asm.load(Target.A, 0x100, 4, 2, 8)                       # other A lines: waits
        asm.softmax(0, 0, 4, 8, a_addr=16)                       # waits for that LOAD
        asm.store_to_a(Target.O, 4, 1, 0, row_elems=4, a_addr=24)   # waits for the SOFTMAX
        asm.softmax(0, 8, 4, 8)                                  # into V: no wait
        asm.load(Target.A, 0x100, 4, 2, 32)
    assert _waits(prog) == [0, VEC, DMA, VEC, 0, 0, 0]
    asm = Assembler(G)
    load = asm.load(Target.A, 0x100, 4, 2, 8)
    into_a = asm.store_to_a(Target.O, 4, 1, 0, row_elems=4, a_addr=24)
    sm_a, sm_v = asm.softmax(0, 0, 4, 8, a_addr=0), asm.softmax(0, 0, 4, 8)
    assert not depends(load, into_a, G) and depends(load, sm_a, G) and depends(sm_a, into_a, G)
    assert not depends(load, sm_v, G)


def test_conflicts_is_symmetric_and_ignores_reads_of_shared_data():
    """Two readers of the same lines never conflict; a reader and a writer always do."""
    g1 = Instruction.make(Op.GEMM, m_tiles=1, n_tiles=1, k_beats=8, a_row_lines=2, b_row_lines=2)
    st = Instruction.make(Op.STORE, target=int(Target.O), rows=4, row_lines=1)
    sto = Instruction.make(Op.STORE, target=int(Target.O), rows=4, row_lines=1, spad_addr=4)
    assert conflicts(g1, st, G) and conflicts(st, g1, G)
    assert not conflicts(g1, sto, G) and not conflicts(sto, g1, G)
    assert not conflicts(st, Instruction.make(Op.STORE, target=int(Target.O), rows=4, row_lines=1,
                                              ext_addr=0x40), G)
    reads, writes = accesses(g1, G)
    assert {s.space for s in reads} == {"A", "B", "P"} and {s.space for s in writes} == {"O"}


def test_timeline_overlaps_independent_engines_and_serializes_dependent_ones():
    """An independent LOAD issued after a GEMM runs during it (the total is less than the two
    alone); with the GEMM depending on the LOAD it cannot start before the LOAD finishes."""
    a = Assembler(G)
    a.gemm(8, 8, 60, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
    a.load(Target.B, 0x100, 4, 8, 32)
    indep = a.end()
    tl = cm.timeline(indep, G)
    assert tl.issue[1] < tl.finish[0]                    # the LOAD starts while the GEMM runs
    alone = sum(cm.instruction_cycles(i, G) for i in indep.instructions)
    assert tl.total < alone

    b = Assembler(G)
    b.load(Target.A, 0x100, 8, 8, 0)
    b.gemm(8, 8, 60, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
    dep = cm.timeline(b.end(), G)
    assert dep.issue[1] >= dep.finish[0]
    assert sum(dep.makespan_shares()) == dep.total


def test_table_and_row_parameter_reads_of_a_gemm():
    """A GEMM with a fused table lookup reads LUT_TABLE: a LOAD of a new table waits for it,
    while a plain GEMM leaves the table free (the LOAD after it waits only for the older,
    table-reading GEMM, which may still drain). With row_params the GEMM reads one P line per
    `cols` output rows, so a LOAD into the P line after those waits for nothing."""
    def prog(asm):
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=0, p_addr=0, lut_bits=8)
        asm.load_const(Target.LUT_TABLE, 0x800, 256)                        # WAR on the table: waits
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=4, p_addr=0)
        asm.load_const(Target.LUT_TABLE, 0x900, 256)                        # only the older GEMM
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=8, p_addr=0)
        asm.load_const(Target.LUT_TABLE, 0xa00, 256)                        # two plain GEMMs: no wait
    assert _waits(prog) == [0, GEMM, 0, WAIT_OLDER_GEMM, 0, 0, 0]
    gemm = Instruction.make(Op.GEMM, m_tiles=3, n_tiles=1, k_beats=8, p_addr=5, row_params=1)
    reads, _ = accesses(gemm, G)
    assert [(s.space, s.lo, s.hi) for s in reads if s.space == "P"] == [("P", 5, 8)]   # 12 rows / 4 per line
    lut = Instruction.make(Op.GEMM, m_tiles=1, n_tiles=1, k_beats=8, lut=1, lut_bits=4)
    assert ("LUT_TABLE", 0, 16) in [(s.space, s.lo, s.hi) for s in accesses(lut, G)[0]]


def test_weight_dma_runs_beside_the_dma_and_waits_for_stores_it_reads():
    """LOADs into B, P and the constant memories go to the weight DMA (port wmem), A and V
    LOADs and STOREs to the DMA engine (port mem): a weight LOAD carries no wait for a running
    activation LOAD, but one reading external bytes a running STORE writes (keys stored, then
    loaded into B) waits for the DMA engine; one reading other bytes does not."""
    from vit2hw.isa import instr_engine
    asm = Assembler(G)
    assert instr_engine(asm.load(Target.B, 0x100, 4, 2, 0)) == Engine.WDMA
    assert instr_engine(asm.load(Target.P, 0x100, 1, 1, 0)) == Engine.WDMA
    assert instr_engine(asm.load(Target.A, 0x100, 4, 2, 0)) == Engine.DMA
    assert instr_engine(asm.store(Target.O, 0x400, 4, 1, 0, row_elems=4)) == Engine.DMA

    def prog(asm):
        asm.load(Target.A, 0x100, 4, 2, 0)
        asm.load(Target.B, 0x200, 4, 2, 0)                 # beside the A load
        asm.gemm(4, 4, 8, a_addr=0, b_addr=0, o_addr=0, p_addr=0)
        asm.store(Target.O, 0x400, 4, 1, 0, row_elems=4)
        asm.load(Target.B, 0x800, 4, 2, 8)                 # other bytes: no wait for the STORE
        asm.load(Target.B, 0x400, 4, 1, 16)                # what the STORE writes: waits
    assert _waits(prog) == [0, 0, DMA | WDMA, GEMM, 0, DMA, 0]


def test_loads_into_b_or_p_on_the_dma_engine_share_the_write_port_but_not_an_order():
    """A LOAD into B or P with ``on_dma`` runs on the DMA engine. It waits for the weight DMA
    only when both write the same scratchpad (B's and P's one write port each), not when they
    write B and P; the port alone does not order two LOADs, so the reordering may swap them;
    and only B and P can be loaded that way."""
    from vit2hw.isa import ProgramError, instr_engine
    from vit2hw.reorder import depends
    asm = Assembler(G)
    b_dma = asm.load(Target.B, 0x100, 4, 2, 0, on_dma=True)
    p_dma = asm.load(Target.P, 0x300, 1, 1, 0, on_dma=True)
    assert instr_engine(b_dma) == Engine.DMA and instr_engine(p_dma) == Engine.DMA
    b_w = asm.load(Target.B, 0x200, 4, 2, 8)
    assert conflicts(b_dma, b_w, G) and not depends(b_dma, b_w, G)
    assert not conflicts(p_dma, b_w, G)
    with pytest.raises(ProgramError, match="on_dma"):
        asm.load(Target.A, 0x100, 4, 2, 0, on_dma=True)

    def prog(asm):
        asm.load(Target.B, 0x100, 4, 2, 0, on_dma=True)
        asm.load(Target.P, 0x300, 1, 1, 0)                 # the other scratchpad: beside it
        asm.load(Target.B, 0x200, 4, 2, 8)                 # B's write port: waits
        asm.load(Target.P, 0x340, 1, 1, 1, on_dma=True)    # beside that one
    assert _waits(prog) == [0, 0, DMA, 0, 0]


def test_timeline_overlaps_the_two_dma_engines():
    """Two independent transfers, one per DMA engine, run at the same time: the program takes
    less than the two back to back, and the weight LOAD issues while the other still runs."""
    asm = Assembler(G)
    asm.load(Target.A, 0x100, 4, 16, 0)
    asm.load(Target.B, 0x800, 4, 16, 0)
    prog = asm.end()
    tl = cm.timeline(prog, SMALL)
    assert tl.issue[1] < tl.finish[0]
    alone = sum(cm.instruction_cycles(i, SMALL) for i in prog.instructions[:2])
    assert tl.total < alone


def test_a_gemm_without_tiles_does_not_hide_a_draining_one():
    """The engine counts only GEMMs that feed tiles, so an empty GEMM between two real ones
    leaves the first in flight: a STORE of the first one's results after the third still
    waits for the older GEMM."""
    from vit2hw.hazards import assign_waits
    real = dict(m_tiles=1, n_tiles=1, k_beats=8, out_bits=8)
    prog = [Instruction.make(Op.GEMM, o_addr=0, **real),
            Instruction.make(Op.GEMM, m_tiles=0, n_tiles=1, k_beats=8, o_addr=8),
            Instruction.make(Op.GEMM, o_addr=4, **real),
            Instruction.make(Op.STORE, target=int(Target.O), ext_addr=0x400, rows=4, row_lines=1,
                             spad_addr=0, row_elems=4)]
    assert [i["wait"] for i in assign_waits(prog, G)] == [0, 0, 0, WAIT_OLDER_GEMM]


def test_reorder_breaks_a_tie_for_the_longer_chain():
    """When two instructions could issue in the same cycle, ``reorder`` takes the one heading
    the longer chain of dependent work: a LOAD of A whose GEMM follows goes before an
    unrelated LOAD into V that was first in program order (the GEMM then starts a whole
    V load earlier), and the program gets shorter. Program order on the tie, the rule before,
    kept the V load first."""
    from vit2hw.reorder import reorder

    asm = Assembler(G)
    asm.load(Target.V, 0x800, 8, 4, 0)                            # nothing depends on it
    asm.load(Target.A, 0x100, 4, 8, 0)
    asm.gemm(4, 4, 32, a_addr=0, b_addr=0, o_addr=0, p_addr=0)    # reads the A lines
    prog = asm.end().instructions
    order, _ = reorder(prog, G)
    assert order[0] == 1 and order.index(1) < order.index(0)
    plain = cm.timeline(type(asm.program)(list(prog)), SMALL).total
    moved = cm.timeline(type(asm.program)([prog[i] for i in order]), SMALL).total
    assert moved < plain
