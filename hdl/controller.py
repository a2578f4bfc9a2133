"""Instruction sequencer and the two compute engines (GEMM, vector) of the accelerator.

:class:`Controller` is the program FSM: fetch one instruction, issue it to the engine it
names once that engine (and every engine its ``wait`` field names) is idle, go on with the
next word (``pc += 32``) until END.
The DMA, weight-DMA, GEMM and vector engines run concurrently; instructions issue in program order
and carry their cross-engine dependencies in their ``wait`` field, so the schedule is a
deterministic function of the program that ``vit2hw.cyclemodel`` replays exactly.

:class:`GemmEngine` tiles ``Y = requant(A @ B)`` over a :class:`~hdl.requant.RequantizedArray`:
it streams one K step of every row of an A tile and of every column of a B tile per cycle
from the banked A/B scratchpads, supplies each drained row's requantization parameters from
the P scratchpad in the drain cycle, and writes requantized rows into O.

:class:`VectorEngine` runs LAYERNORM / SOFTMAX (log2 or uniform, by its ``mode`` field) /
LUT / RESIDUAL_ADD: it starts the unit, streams consecutive V lines into it and writes its
output beats to consecutive V lines.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from vit2hw.isa import (FIELDS, INSTR_BITS, INSTR_BYTES, OPCODE_BITS, RECORD_BYTES, WAIT_POS,
                        WDMA_TARGETS, DMA_CAPABLE, Engine, Geometry, Op, engine_of, field_offsets)

from .dma import ADDR_BITS
from .forward import MoveUnit
from .layernorm import LayerNormUnit
from .requant import REQUANT_LATENCY, RequantizedArray
from .scratchpad import read_port_signature, write_port_signature
from .softmax import SoftmaxUnit
from .vector import OP_LUT, OP_RESIDUAL, VectorUnit
from .vecops import ceil_log2, const_write_signature

__all__ = ["instr_layout", "drain_context_layout", "Controller", "GemmEngine", "VectorEngine"]


def instr_layout(op: Op) -> data.StructLayout:
    """The instruction word of ``op`` as a struct (opcode, then the fields, LSB first)."""
    fields = {"opcode": unsigned(OPCODE_BITS)}
    for f in FIELDS[op]:
        fields[f.name] = signed(f.bits) if f.signed else unsigned(f.bits)
    return data.StructLayout(fields)


def view(value, op: Op):
    """Decode ``value`` (the instruction bits) as ``op``'s fields."""
    layout = instr_layout(op)
    return data.View(layout, value[:layout.size])


class Controller(wiring.Component):
    """Program sequencer: fetches instructions in order and issues each to its engine.

    An instruction issues once its engine can take it and every engine named in its ``wait``
    field (:data:`vit2hw.isa.WAIT_FIELD`) is idle; the sequencer then fetches the next one
    while the engines run (instructions come through their own memory port, so a fetch
    never waits for the DMA engine). FENCE and END wait for all engines.

    Members
    -------
    start : In(1)
        Begin executing the program at byte address ``prog_addr`` (ignored while running).
    running, done, error : Out(1)
        ``done`` is high once END (or an unknown opcode, which also sets ``error``) was
        reached, until the next ``start``.
    cycles : Out(32)
        Cycles from the ``start`` cycle (exclusive) to ``done`` rising (inclusive).
    fetch_go, pc, fetch_busy, instr : fetcher handshake.
    go : Out(len(Engine))
        Issue: bit ``e`` pulses for one cycle when an instruction for engine ``e`` issues,
        with ``instr`` holding it.
    opcode : Out(8)
        The opcode of ``instr``.
    engine_busy : In(len(Engine))
        Busy flag of each engine, bit ``e`` for :class:`vit2hw.isa.Engine` ``e``.
    accept_busy : In(len(Engine))
        The engine cannot take an instruction now (the GEMM engine takes one while the
        previous one drains; for the others this is ``engine_busy``).
    older_busy : In(1)
        A GEMM other than the latest one is not done (``wait`` bit 4).
    """

    def __init__(self):
        super().__init__({
            "start": In(1), "prog_addr": In(ADDR_BITS),
            "running": Out(1), "done": Out(1), "error": Out(1), "cycles": Out(32),
            "fetch_go": Out(1), "pc": Out(ADDR_BITS), "fetch_busy": In(1), "instr": In(INSTR_BITS),
            "go": Out(len(Engine)), "opcode": Out(OPCODE_BITS), "engine_busy": In(len(Engine)),
            "accept_busy": In(len(Engine)), "older_busy": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        op = self.instr[:OPCODE_BITS]
        wait = self.instr[WAIT_POS:WAIT_POS + len(Engine)]
        wait_older = self.instr[WAIT_POS + len(Engine)]
        busy = self.engine_busy
        target = Signal(len(Engine))
        v_load = view(self.instr, Op.LOAD)
        load_target = v_load.target
        to_wdma = Signal()
        m.d.comb += to_wdma.eq(0)
        for t in WDMA_TARGETS:
            with m.If(load_target == t):
                # on_dma: a LOAD into B or P that the program gave the DMA engine
                m.d.comb += to_wdma.eq(~v_load.on_dma if t in DMA_CAPABLE else 1)
        for o in Op:
            e = engine_of(o)
            if o == Op.LOAD:              # weights and constants go to the weight DMA
                with m.If(op == o):
                    m.d.comb += target.eq(Mux(to_wdma, 1 << int(Engine.WDMA), 1 << int(e)))
            elif e is not None:
                with m.If(op == o):
                    m.d.comb += target.eq(1 << int(e))
        m.d.comb += self.opcode.eq(op)
        with m.If(self.running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.pc.eq(self.prog_addr), self.cycles.eq(0), self.done.eq(0),
                                 self.error.eq(0), self.running.eq(1)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.fetch_go.eq(1)
                m.next = "WAIT_FETCH"
            with m.State("WAIT_FETCH"):
                with m.If(~self.fetch_busy):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                with m.If(op == Op.END):
                    with m.If(busy == 0):
                        m.d.sync += [self.done.eq(1), self.running.eq(0)]
                        m.next = "IDLE"
                with m.Elif(op == Op.FENCE):
                    with m.If(busy == 0):
                        m.d.sync += self.pc.eq(self.pc + INSTR_BYTES)
                        m.next = "FETCH"
                with m.Elif(op > max(Op)):
                    m.d.sync += [self.done.eq(1), self.error.eq(1), self.running.eq(0)]
                    m.next = "IDLE"
                with m.Elif((((busy & wait) | (self.accept_busy & target)) == 0) & ~(wait_older & self.older_busy)):
                    m.d.comb += self.go.eq(target)
                    m.d.sync += self.pc.eq(self.pc + INSTR_BYTES)
                    m.next = "FETCH"
        return m


def drain_context_layout() -> data.StructLayout:
    """The GEMM fields the drain needs after the feed has moved on to the next GEMM."""
    gemm = {f.name: f for f in FIELDS[Op.GEMM]}
    names = ("m_tiles", "n_tiles", "o_addr", "p_addr", "row_params", "bias_per_row", "bias_pairs", "bias_quads",
             "out_bits", "out_signed", "bypass", "lut", "lut_bits")
    return data.StructLayout({n: unsigned(gemm[n].bits) for n in names})


class GemmEngine(wiring.Component):
    """GEMM: ``m_tiles × n_tiles`` tiles of ``k_beats`` beats, requantized into O.

    Tile ``(i, j)`` reads A lines ``a_addr + i·a_row_lines + k // bus_bytes`` of every A bank
    and B lines ``b_addr + j·b_row_lines + k // bus_bytes`` of every B bank, byte
    ``k % bus_bytes``. Output row ``r`` of the tile (global row ``m = i·rows + r``) goes to O
    line ``o_addr + m·n_tiles + j`` with the parameters of P line ``p_addr + j`` (or
    ``p_addr + m·n_tiles + j`` with ``bias_per_row``, ``p_addr + (m // 2)·n_tiles + j`` with
    ``bias_pairs`` too, odd rows taking the records' second bias; ``p_addr + (m // 4)·n_tiles + j``
    with ``bias_quads``, row ``m`` taking the ``m % 4``-th 24-bit bias of a PARAM_QUAD_RECORD).
    With ``lut`` every requantized code is
    looked up in the engine's copies of LUT_TABLE (written through ``lut_wr``) before O.

    The engine takes the next GEMM while the previous one drains: ``accept_busy`` is high
    while it feeds or while two GEMMs are not done (two drain contexts);
    ``busy`` while any row is not yet in O; ``older_busy`` while a GEMM other than the
    latest one is not yet done (the ``wait`` bit :data:`vit2hw.isa.WAIT_OLDER_GEMM`).
    """

    def __init__(self, geometry: Geometry, acc_bits: int = 32, tag_bits: int = 8):
        g = self.g = geometry
        self.acc_bits, self.tag_bits = acc_bits, tag_bits
        wbits = g.bus_bytes * 8
        super().__init__({
            "go": In(1), "instr": In(INSTR_BITS), "busy": Out(1), "accept_busy": Out(1), "older_busy": Out(1),
            "a_rd": Out(read_port_signature(wbits, g.a_depth, g.rows)),
            "b_rd": Out(read_port_signature(wbits, g.b_depth, g.cols)),
            "p_rd": Out(read_port_signature(g.cols * RECORD_BYTES * 8, g.p_depth, 1)),
            "o_wr": Out(write_port_signature(g.cols * 32, g.o_depth, 1)),
            "lut_wr": In(const_write_signature(8, signed(16))),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.g
        R, C = g.rows, g.cols
        m.submodules.array = ra = RequantizedArray(R, C, 8, self.acc_bits, self.tag_bits, g.int4_packing)
        cfg = view(self.instr, Op.GEMM)
        lg = (g.bus_bytes - 1).bit_length()

        # ---- feed: one K step of the tile per accepted beat. The scratchpads read
        # synchronously, so the A/B addresses come from the counters' next values: the
        # line used in a cycle was addressed in the cycle before.
        feeding = Signal()
        f_rows = Signal(16)
        f_j = Signal(16)
        k, k_n = Signal(16), Signal(16)
        a_base, a_base_n = Signal(24), Signal(24)
        b_base, b_base_n = Signal(24), Signal(24)
        m.d.comb += [k_n.eq(k), a_base_n.eq(a_base), b_base_n.eq(b_base)]
        m.d.sync += [k.eq(k_n), a_base.eq(a_base_n), b_base.eq(b_base_n)]
        sel = k[:lg] if lg else 0
        m.d.comb += [self.a_rd.addr.eq(a_base_n + (k_n >> lg)), self.b_rd.addr.eq(b_base_n + (k_n >> lg))]
        pi = ra.i.payload
        for r in range(R):
            m.d.comb += pi.a[r].eq(self.a_rd.data[r].word_select(sel, 8) if lg else self.a_rd.data[r][:8])
        for c in range(C):
            m.d.comb += pi.b[c].eq(self.b_rd.data[c].word_select(sel, 8) if lg else self.b_rd.data[c][:8])
        last = k == cfg.k_beats - 1
        m.d.comb += [ra.i.valid.eq(feeding), pi.first.eq(k == 0), pi.last.eq(last),
                     pi.mode.eq(cfg.mode), pi.a_unsigned.eq(cfg.a_unsigned), pi.tag.eq(0)]
        nonempty = (cfg.m_tiles != 0) & (cfg.n_tiles != 0) & (cfg.k_beats != 0)
        with m.If(self.go):
            m.d.sync += [feeding.eq(nonempty), f_rows.eq(cfg.m_tiles), f_j.eq(0)]
            m.d.comb += [k_n.eq(0), a_base_n.eq(cfg.a_addr), b_base_n.eq(cfg.b_addr)]
        with m.Elif(ra.i.valid & ra.i.ready):
            with m.If(last):
                m.d.comb += k_n.eq(0)
                with m.If(f_j == cfg.n_tiles - 1):
                    m.d.sync += [f_j.eq(0), f_rows.eq(f_rows - 1)]
                    m.d.comb += [b_base_n.eq(cfg.b_addr), a_base_n.eq(a_base + cfg.a_row_lines)]
                    with m.If(f_rows == 1):
                        m.d.sync += feeding.eq(0)
                with m.Else():
                    m.d.sync += f_j.eq(f_j + 1)
                    m.d.comb += b_base_n.eq(b_base + cfg.b_row_lines)
            with m.Else():
                m.d.comb += k_n.eq(k + 1)

        # ---- drain contexts: the engine takes the next GEMM once it has fed this one's last
        # beat, so rows of one instruction may still leave the array while the next one
        # feeds. Each instruction's drain-side fields go to one of two context registers at
        # issue; the drain walks its rows in order and moves to the other context after an
        # instruction's last row. A third GEMM waits until the oldest one is done
        # (accept_busy), so a context is never overwritten while in use and at most two GEMMs
        # are ever in flight (vit2hw.hazards tracks both).
        ctx = [Signal(drain_context_layout(), name=f"ctx{i}") for i in range(2)]
        f_slot = Signal()
        d_slot = Signal()
        with m.If(self.go & nonempty):
            for i in range(2):
                with m.If(f_slot == i):
                    m.d.sync += [getattr(ctx[i], f).eq(getattr(cfg, f)) for f in drain_context_layout().members]
            m.d.sync += f_slot.eq(~f_slot)
        dc = Signal(drain_context_layout())   # the context of the row leaving now
        nc = Signal(drain_context_layout())   # ... of the next row to leave
        m.d.comb += dc.eq(Mux(d_slot, ctx[1], ctx[0]))

        # ---- drain: parameters and O address of each row leaving the array
        d_i, d_i_n = Signal(16), Signal(16)
        d_j, d_j_n = Signal(16), Signal(16)
        d_rowoff, d_rowoff_n = Signal(24), Signal(24)
        o_ptr, o_ptr_n = Signal(24), Signal(24)
        cur = Signal(24)
        m.d.comb += [d_i_n.eq(d_i), d_j_n.eq(d_j), d_rowoff_n.eq(d_rowoff), o_ptr_n.eq(o_ptr)]
        m.d.sync += [d_i.eq(d_i_n), d_j.eq(d_j_n), d_rowoff.eq(d_rowoff_n), o_ptr.eq(o_ptr_n)]
        m.d.comb += cur.eq(Mux(ra.drain_row == 0, d_rowoff + d_j, o_ptr))
        tile_end = ra.drain_valid & (ra.drain_row == R - 1)
        instr_end = Signal()
        m.d.comb += instr_end.eq(tile_end & (d_j == dc.n_tiles - 1) & (d_i == dc.m_tiles - 1))
        m.d.comb += nc.eq(Mux(d_slot ^ instr_end, ctx[1], ctx[0]))
        with m.If(instr_end):
            m.d.sync += d_slot.eq(~d_slot)
            m.d.comb += [d_i_n.eq(0), d_j_n.eq(0), d_rowoff_n.eq(0), o_ptr_n.eq(0)]
        with m.Elif(ra.drain_valid):
            m.d.comb += o_ptr_n.eq(cur + dc.n_tiles)
            with m.If(ra.drain_row == R - 1):
                with m.If(d_j == dc.n_tiles - 1):
                    m.d.comb += [d_j_n.eq(0), d_i_n.eq(d_i + 1), d_rowoff_n.eq(d_rowoff + dc.n_tiles * R)]
                with m.Else():
                    m.d.comb += d_j_n.eq(d_j + 1)
        # P is read one cycle ahead of the drain: rows leave in order 0..R-1 on consecutive
        # cycles, so after row r < R-1 comes row r+1 (at o_ptr_n), otherwise the next row
        # to leave, whenever it does, is row 0 of the next tile (d_rowoff_n, d_j_n), of the
        # next instruction after the last tile (all counters 0, context nc)
        cur_n = Signal(24)
        same_tile = ra.drain_valid & (ra.drain_row != R - 1)
        m.d.comb += cur_n.eq(Mux(same_tile, o_ptr_n, d_rowoff_n + d_j_n))
        # bias_pairs: rows 2i and 2i+1 of the instruction share P line i·n_tiles + j. With an
        # even R a tile's row r has the parity of r, and its pair offset (r // 2)·n_tiles
        # grows by n_tiles after each odd row; the tile's first pair is at d_rowoff / 2.
        # bias_quads (R a multiple of 4): the same with rows 4i .. 4i+3 and d_rowoff / 4.
        quads = R % 4 == 0
        pr_off, pr_off_n = Signal(24), Signal(24)
        m.d.comb += pr_off_n.eq(pr_off)
        m.d.sync += pr_off.eq(pr_off_n)
        pr_cur = Mux(ra.drain_row == 0, 0, pr_off)
        group_last = Mux(dc.bias_quads, ra.drain_row[:2] == 3, ra.drain_row[0]) if quads else ra.drain_row[0]
        with m.If(instr_end):
            m.d.comb += pr_off_n.eq(0)
        with m.Elif(ra.drain_valid):
            m.d.comb += pr_off_n.eq(pr_cur + Mux(group_last, dc.n_tiles, 0))
        group_base = lambda rowoff: (Mux(nc.bias_quads, rowoff >> 2, rowoff >> 1) if quads else rowoff >> 1)
        pair_n = Signal(24)
        m.d.comb += pair_n.eq(Mux(same_tile, group_base(d_rowoff) + d_j + pr_off_n,
                                  group_base(d_rowoff_n) + d_j_n))
        odd_row = Signal()
        m.d.comb += odd_row.eq(dc.bias_pairs & ra.drain_row[0] if R % 2 == 0 else 0)
        quad_row = Signal()
        m.d.comb += quad_row.eq(dc.bias_per_row & dc.bias_quads if quads else 0)
        # row_params: rows leave in order 0, 1, 2, ... (one column tile), row r taking record
        # r % C of P line r // C; (rp_line, rp_rec) is the next row to leave
        rp_line, rp_line_n = Signal(24), Signal(24)
        rp_rec, rp_rec_n = Signal(range(C)), Signal(range(C))
        m.d.comb += [rp_line_n.eq(rp_line), rp_rec_n.eq(rp_rec)]
        m.d.sync += [rp_line.eq(rp_line_n), rp_rec.eq(rp_rec_n)]
        with m.If(instr_end):
            m.d.comb += [rp_line_n.eq(0), rp_rec_n.eq(0)]
        with m.Elif(ra.drain_valid):
            with m.If(rp_rec == C - 1):
                m.d.comb += [rp_rec_n.eq(0), rp_line_n.eq(rp_line + 1)]
            with m.Else():
                m.d.comb += rp_rec_n.eq(rp_rec + 1)
        m.d.comb += self.p_rd.addr.eq(nc.p_addr + Mux(nc.row_params, rp_line_n,
                                                      Mux(nc.bias_per_row,
                                                          Mux(nc.bias_pairs | nc.bias_quads, pair_n, cur_n),
                                                          d_j_n)))
        rec_bits = RECORD_BYTES * 8
        prm = self.p_rd.data[0]
        row_rec = Signal(rec_bits)
        m.d.comb += row_rec.eq(prm.word_select(rp_rec, rec_bits))
        for c in range(C):
            rec = Mux(dc.row_params, row_rec, prm[c * rec_bits:(c + 1) * rec_bits])
            col = ra.params.col[c]
            pair_bias = Mux(odd_row, rec[96:128], rec[0:32])
            if quads:
                # PARAM_QUAD_RECORD: row 4i+k's 24-bit bias at bit 24k, then m, s and an int8 zp
                q = ra.drain_row[:2]
                quad_bias = Mux(q[1], Mux(q[0], rec[72:96], rec[48:72]), Mux(q[0], rec[24:48], rec[0:24])).as_signed()
                m.d.comb += [col.bias.eq(Mux(quad_row, quad_bias, pair_bias.as_signed())),
                             col.m.eq(Mux(quad_row, rec[96:112], rec[32:48])),
                             col.s.eq(Mux(quad_row, rec[112:118], rec[48:54])),
                             col.zp.eq(Mux(quad_row, rec[120:128].as_signed(), rec[64:80].as_signed()))]
            else:
                m.d.comb += [col.bias.eq(pair_bias), col.m.eq(rec[32:48]), col.s.eq(rec[48:54]), col.zp.eq(rec[64:80])]
        m.d.comb += [ra.params.out_bits.eq(dc.out_bits), ra.params.out_signed.eq(dc.out_signed),
                     ra.params.bypass.eq(dc.bypass)]
        # the row's O address, lookup flag and end-of-instruction mark travel alongside the
        # requantizer pipeline
        row_layout = data.StructLayout({"addr": 24, "lut": 1, "lut_bits": 4, "end": 1})
        pipe = [Signal(row_layout, name=f"orow{i}") for i in range(REQUANT_LATENCY)]
        m.d.sync += [pipe[0].addr.eq(dc.o_addr + cur), pipe[0].lut.eq(dc.lut), pipe[0].lut_bits.eq(dc.lut_bits),
                     pipe[0].end.eq(instr_end)]
        m.d.sync += [pipe[i].eq(pipe[i - 1]) for i in range(1, REQUANT_LATENCY)]
        out_row = pipe[-1]
        # optional table lookup of every requantized code (e.g. GELU fused into the layer that
        # feeds it): one copy of LUT_TABLE per column, read combinationally from the
        # requantizer's output register, so the drain keeps its latency and the cycle model
        # is unchanged
        lut_offset = (Const(1, 9) << out_row.lut_bits) >> 1
        lanes = []
        for c in range(C):
            table = memory.Memory(shape=signed(16), depth=256, init=[])
            m.submodules[f"lut{c}"] = table
            wp = table.write_port()
            m.d.comb += [wp.addr.eq(self.lut_wr.addr), wp.data.eq(self.lut_wr.data), wp.en.eq(self.lut_wr.en)]
            rp = table.read_port(domain="comb")
            y = ra.o.payload.y[c]
            m.d.comb += rp.addr.eq((y[:8] + lut_offset)[:8])
            lane = Signal(signed(32), name=f"drain{c}")
            m.d.comb += lane.eq(Mux(out_row.lut, rp.data, y))
            lanes.append(lane)
        m.d.comb += [self.o_wr.en.eq(ra.o.valid), self.o_wr.addr.eq(out_row.addr),
                     self.o_wr.data.eq(Cat(*lanes))]
        # GEMMs whose last row is not yet in O; a context is free again once its GEMM is done
        in_flight = Signal(range(3))
        m.d.sync += in_flight.eq(in_flight + (self.go & nonempty) - (ra.o.valid & out_row.end))
        m.d.comb += [self.busy.eq(feeding | ra.busy), self.accept_busy.eq(feeding | (in_flight == 2)),
                     self.older_busy.eq(in_flight == 2)]
        return m


class VectorEngine(wiring.Component):
    """LAYERNORM, SOFTMAX, LUT and RESIDUAL_ADD over consecutive V lines.

    Holds the three vector-side units (``hdl/layernorm.py``, ``hdl/softmax.py``,
    ``hdl/vector.py``) with ``vector_lanes`` lanes; their constant write ports are exposed
    for the LOAD engine. V lanes are 32 bits; units read their low ``in`` bits and their
    outputs are sign-extended (softmax codes zero-extended) into V lanes.
    """

    def __init__(self, geometry: Geometry):
        g = self.g = geometry
        L = g.lanes
        max_ch = g.max_channels
        self.ln = LayerNormUnit(lanes=L, max_channels=max_ch, in_bits=8, out_width=16)
        self.sm = SoftmaxUnit(lanes=L, max_len=g.max_tokens, score_bits=16)
        self.vu = VectorUnit(lanes=L, max_channels=max_ch, in_width=16, out_width=16, lut_in_bits=8)
        super().__init__({
            "go": In(1), "instr": In(INSTR_BITS), "busy": Out(1),
            "va": Out(read_port_signature(L * 32, g.v_depth, 1)),
            "vb": Out(read_port_signature(L * 32, g.v_depth, 1)),
            "vw": Out(write_port_signature(L * 32, g.v_depth, 1)),
            "ln_const": In(const_write_signature(ceil_log2(max_ch), self.ln.const_layout)),
            "res_const": In(const_write_signature(ceil_log2(max_ch), self.vu.const_layout)),
            "lut_wr": In(const_write_signature(8, signed(16))),
            "o_rd": Out(read_port_signature(g.cols * 32, g.o_depth, 1)),
            # SOFTMAX into A (dst_a): a beat's low bytes as one A line (lanes == bus bytes only)
            "aw": Out(wiring.Signature({"en": Out(1), "bank": Out(range(max(g.rows, 2))), "addr": Out(24),
                                        "data": Out(g.bus_bytes * 8)})),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.g
        L = g.lanes
        m.submodules.ln, m.submodules.sm, m.submodules.vu = ln, sm, vu = self.ln, self.sm, self.vu
        # MOVE (O → V) exists when an O line is whole V lines; its ``dst`` is read through the
        # LAYERNORM view below, so both must sit at the same bits
        assert field_offsets(Op.MOVE)["dst"][0] == field_offsets(Op.LAYERNORM)["dst"][0]
        mv = None
        if g.cols % L == 0:
            m.submodules.mv = mv = MoveUnit(g.cols, L, g.o_depth)
            m.d.comb += self.o_rd.addr.eq(mv.o_rd.addr)
            m.d.comb += mv.o_rd.data.eq(self.o_rd.data)
            v_mv = view(self.instr, Op.MOVE)
            m.d.comb += [mv.start.eq(self.go & (self.instr[:OPCODE_BITS] == Op.MOVE)), mv.src.eq(v_mv.src),
                         mv.rows.eq(v_mv.rows), mv.src_row_lines.eq(v_mv.src_row_lines),
                         mv.dst_row_lines.eq(v_mv.dst_row_lines)]
        wiring.connect(m, wiring.flipped(self.ln_const), ln.const_wr)
        wiring.connect(m, wiring.flipped(self.res_const), vu.const_wr)
        wiring.connect(m, wiring.flipped(self.lut_wr), vu.lut_wr)

        op = self.instr[:OPCODE_BITS]
        v_ln, v_sm = view(self.instr, Op.LAYERNORM), view(self.instr, Op.SOFTMAX)
        v_lut, v_res = view(self.instr, Op.LUT), view(self.instr, Op.RESIDUAL_ADD)
        m.d.comb += [
            ln.cfg.channels.eq(v_ln.channels), ln.cfg.rows.eq(v_ln.rows),
            ln.cfg.out_bits.eq(v_ln.out_bits), ln.cfg.out_zp.eq(v_ln.out_zp),
            sm.cfg.length.eq(v_sm.length), sm.cfg.rows.eq(v_sm.rows), sm.cfg.mode.eq(v_sm.mode),
            vu.cfg.op.eq(Mux(op == Op.LUT, OP_LUT, OP_RESIDUAL)),
            vu.cfg.beats.eq(Mux(op == Op.LUT, v_lut.lines, v_res.lines)),
            vu.cfg.channels.eq(Mux(op == Op.LUT, L, v_res.channels)),
            vu.cfg.out_bits.eq(Mux(op == Op.LUT, 16, v_res.out_bits)), vu.cfg.out_zp.eq(v_res.out_zp),
            vu.cfg.lut_bits.eq(v_lut.lut_bits),
            ln.start.eq(self.go & (op == Op.LAYERNORM)),
            sm.start.eq(self.go & (op == Op.SOFTMAX)),
            vu.start.eq(self.go & ((op == Op.LUT) | (op == Op.RESIDUAL_ADD))),
        ]

        running = Signal()
        unit = Signal(2)  # 0 LN, 1 softmax, 2 vector unit, 3 MOVE
        pa, pb, pw = Signal(24), Signal(24), Signal(24)
        mv_busy, mv_valid = (mv.busy, mv.valid) if mv is not None else (0, 0)
        unit_busy = Mux(unit == 0, ln.busy, Mux(unit == 1, sm.busy, Mux(unit == 2, vu.busy, mv_busy)))
        m.d.comb += self.busy.eq(running)
        # the V reads are synchronous: address the line of the next cycle (pa_n, pb_n)
        pa_n, pb_n = Signal(24), Signal(24)
        m.d.comb += [pa_n.eq(pa), pb_n.eq(pb)]
        m.d.sync += [pa.eq(pa_n), pb.eq(pb_n)]
        with m.If(self.go):
            m.d.sync += [running.eq(1),
                         unit.eq(Mux(op == Op.LAYERNORM, 0, Mux(op == Op.SOFTMAX, 1, Mux(op == Op.MOVE, 3, 2)))),
                         pw.eq(Mux(op == Op.RESIDUAL_ADD, v_res.dst, v_ln.dst))]
            m.d.comb += [pa_n.eq(Mux(op == Op.RESIDUAL_ADD, v_res.src_a, v_ln.src)), pb_n.eq(v_res.src_b)]
        with m.Elif(running & ~unit_busy):
            m.d.sync += running.eq(0)

        # input beats from consecutive V lines
        m.d.comb += [self.va.addr.eq(pa_n), self.vb.addr.eq(pb_n)]
        va, vb = self.va.data[0], self.vb.data[0]
        # SOFTMAX with src_o reads its scores from O instead: beat b of a row is lane group
        # b % k of the row's O line b // k (k = cols / lanes), rows src_row_lines lines apart.
        # Like the V reads, O is addressed with the next beat's line, so a held beat (the unit
        # not ready) keeps its line on the port.
        from_o = Signal()
        o_lane = None
        if mv is not None:
            k = g.cols // L
            ob, oq, obeat = Signal(24), Signal(16), Signal(16)
            orr = Signal(range(k))
            ob_n, oq_n, obeat_n = Signal(24), Signal(16), Signal(16)
            orr_n = Signal(range(k))
            srl, sbeats = Signal(16), Signal(16)
            m.d.comb += [ob_n.eq(ob), oq_n.eq(oq), obeat_n.eq(obeat), orr_n.eq(orr)]
            m.d.sync += [ob.eq(ob_n), oq.eq(oq_n), obeat.eq(obeat_n), orr.eq(orr_n)]
            with m.If(self.go):
                m.d.sync += [from_o.eq((op == Op.SOFTMAX) & v_sm.src_o), srl.eq(v_sm.src_row_lines),
                             sbeats.eq((v_sm.length + (L - 1)) >> (L - 1).bit_length())]
                m.d.comb += [ob_n.eq(v_sm.src), oq_n.eq(0), obeat_n.eq(0), orr_n.eq(0)]
            with m.Elif(from_o & sm.i.valid & sm.i.ready):
                with m.If(obeat == sbeats - 1):
                    m.d.comb += [ob_n.eq(ob + srl), oq_n.eq(0), obeat_n.eq(0), orr_n.eq(0)]
                with m.Else():
                    m.d.comb += obeat_n.eq(obeat + 1)
                    if k == 1:
                        m.d.comb += oq_n.eq(oq + 1)
                    else:
                        with m.If(orr == k - 1):
                            m.d.comb += [orr_n.eq(0), oq_n.eq(oq + 1)]
                        with m.Else():
                            m.d.comb += orr_n.eq(orr + 1)
            # MOVE owns the port while it runs; otherwise it carries the softmax's next line
            with m.If(~(running & (unit == 3))):
                m.d.comb += self.o_rd.addr.eq(ob_n + oq_n)
            o_lane = self.o_rd.data[0].word_select(orr, L * 32)
        for l in range(L):
            lane_a, lane_b = va[l * 32:(l + 1) * 32], vb[l * 32:(l + 1) * 32]
            score = lane_a[:16] if o_lane is None else Mux(from_o, o_lane[l * 32:l * 32 + 16], lane_a[:16])
            m.d.comb += [ln.i.payload[l].eq(lane_a[:8]), sm.i.payload[l].eq(score),
                         vu.i.payload.a[l].eq(lane_a[:16]), vu.i.payload.b[l].eq(lane_b[:16])]
        m.d.comb += [ln.i.valid.eq(running & (unit == 0)), sm.i.valid.eq(running & (unit == 1)),
                     vu.i.valid.eq(running & (unit == 2))]
        fire_in = (ln.i.valid & ln.i.ready) | (sm.i.valid & sm.i.ready) | (vu.i.valid & vu.i.ready)
        with m.If(fire_in & ~self.go):
            m.d.comb += [pa_n.eq(pa + 1), pb_n.eq(pb + 1)]

        # output beats to consecutive V lines
        m.d.comb += [ln.o.ready.eq(1), sm.o.ready.eq(1), vu.o.ready.eq(1)]
        out = Signal(L * 32)
        for l in range(L):
            moved = mv.data[l * 32:(l + 1) * 32] if mv is not None else 0
            m.d.comb += out[l * 32:(l + 1) * 32].eq(
                Mux(unit == 0, ln.o.payload[l].as_signed(),
                    Mux(unit == 1, sm.o.payload[l].as_unsigned(),
                        Mux(unit == 2, vu.o.payload[l].as_signed(), moved))))
        fire_out = Mux(unit == 0, ln.o.valid, Mux(unit == 1, sm.o.valid, Mux(unit == 2, vu.o.valid, mv_valid)))
        to_a = Signal()
        m.d.comb += [self.vw.en.eq(running & fire_out & ~to_a), self.vw.addr.eq(pw), self.vw.data.eq(out)]
        with m.If(self.vw.en & ~self.go):
            m.d.sync += pw.eq(pw + 1)
        if L == g.bus_bytes:
            # row i's beats fill A lines a_addr + (i // rows)·pitch + j of bank i % rows (as a
            # STORE of V lines into A places them; pitch = beats a row)
            a_bank = Signal(range(max(g.rows, 2)))
            a_line, a_row0 = Signal(24), Signal(24)
            pitch, beat = Signal(16), Signal(16)
            with m.If(self.go):
                m.d.sync += [to_a.eq((op == Op.SOFTMAX) & v_sm.dst_a), a_bank.eq(0), a_line.eq(v_sm.a_addr),
                             a_row0.eq(v_sm.a_addr), beat.eq(0),
                             pitch.eq((v_sm.length + (L - 1)) >> (L - 1).bit_length())]
            fire_a = running & fire_out & to_a
            m.d.comb += [self.aw.en.eq(fire_a), self.aw.bank.eq(a_bank), self.aw.addr.eq(a_line),
                         self.aw.data.eq(Cat(*[out[l * 32:l * 32 + 8] for l in range(L)]))]
            with m.If(fire_a & ~self.go):
                with m.If(beat == pitch - 1):
                    m.d.sync += beat.eq(0)
                    with m.If(a_bank == g.rows - 1):
                        m.d.sync += [a_bank.eq(0), a_row0.eq(a_row0 + pitch), a_line.eq(a_row0 + pitch)]
                    with m.Else():
                        m.d.sync += [a_bank.eq(a_bank + 1), a_line.eq(a_row0)]
                with m.Else():
                    m.d.sync += [beat.eq(beat + 1), a_line.eq(a_line + 1)]
        return m
