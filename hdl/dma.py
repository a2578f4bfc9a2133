"""External memory port and the engines that use it: instruction fetch, LOAD, STORE.

Memory bus (``mem_bus_signature``, the accelerator's only external port; master view)
------------------------------------------------------------------------------------
``req_valid``/``req_ready`` handshake a request; ``req_addr`` is a byte address (bus-word
aligned), ``req_we`` selects write, ``req_wdata``/``req_wstrb`` are the write data and its
byte strobes. Every accepted read is answered by exactly one ``resp_valid`` cycle with
``resp_rdata``, **in request order**, any number of cycles later (at least one); the master
always accepts responses (no ``resp_ready``) and may have any number of reads outstanding.
Writes are posted (no response); the memory applies requests in order, so a read after a
write to the same address returns the new data.

Engines (one runs at a time; the controller selects whose requests reach the bus)
--------------------------------------------------------------------------------
* :class:`Fetcher` reads one 256-bit instruction word.
* :class:`LoadEngine` copies a 2-D region (``rows`` rows ``ext_stride`` bytes apart, each
  ``row_lines`` scratchpad lines of whole bus words) into a scratchpad or a unit's constant
  memory. It issues one read per cycle while the bus is ready and writes a line as soon as
  its last word returns.
* :class:`StoreEngine` writes ``rows`` × ``row_lines`` lines of the O or V scratchpad,
  narrowing each 32-bit lane to 1, 2 or 4 bytes, one word per cycle while the bus is ready;
  elements at or beyond ``row_elems`` in a row get their byte strobes cleared, and a row
  stops after its last word that holds an element below ``row_elems``
  (:func:`vit2hw.isa.store_words_written`). With ``dst_a`` the words go into A instead
  (``aw``, one per cycle, cleared bytes zero, skipped words untouched): an on-chip copy of
  GEMM results or vector-unit rows into the array's A operand.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vit2hw.isa import FIELDS, INSTR_BITS, Op, RECORD_BYTES, Geometry, Target

from .scratchpad import read_port_signature

__all__ = ["ADDR_BITS", "mem_bus_signature", "field_signature", "Fetcher", "LoadEngine", "StoreEngine",
           "BusMux"]

ADDR_BITS = 32


def mem_bus_signature(bus_bits: int, addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """The external memory port as seen by the accelerator (see the module docstring)."""
    return wiring.Signature({
        "req_valid": Out(1), "req_ready": In(1), "req_addr": Out(addr_bits), "req_we": Out(1),
        "req_wdata": Out(bus_bits), "req_wstrb": Out(bus_bits // 8),
        "resp_valid": In(1), "resp_rdata": In(bus_bits),
    })


def field_signature(op: Op) -> wiring.Signature:
    """An opcode's decoded fields as signals (driver's view), widths from :data:`vit2hw.isa.FIELDS`."""
    from amaranth.hdl import signed, unsigned
    return wiring.Signature({f.name: Out(signed(f.bits) if f.signed else unsigned(f.bits))
                             for f in FIELDS[op]})


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class Fetcher(wiring.Component):
    """Reads the 256-bit instruction at byte address ``pc`` into ``instr``.

    ``go`` starts a fetch; ``busy`` is high from the next cycle until ``instr`` holds the
    whole word (``INSTR_BITS / bus_bits`` reads, issued back to back).
    """

    def __init__(self, bus_bits: int):
        self.bus_bits = bus_bits
        self.words = INSTR_BITS // bus_bits
        super().__init__({
            "go": In(1), "pc": In(ADDR_BITS), "busy": Out(1), "instr": Out(INSTR_BITS),
            "bus": Out(mem_bus_signature(bus_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        wb = self.bus_bits // 8
        n = self.words
        to_issue = Signal(range(n + 1))
        to_recv = Signal(range(n + 1))
        addr = Signal(ADDR_BITS)
        widx = Signal(range(n))
        m.d.comb += [
            self.busy.eq(to_recv != 0),
            self.bus.req_valid.eq(to_issue != 0),
            self.bus.req_addr.eq(addr),
            self.bus.req_we.eq(0),
        ]
        with m.If(self.go):
            m.d.sync += [to_issue.eq(n), to_recv.eq(n), addr.eq(self.pc), widx.eq(0)]
        with m.Else():
            with m.If(self.bus.req_valid & self.bus.req_ready):
                m.d.sync += [to_issue.eq(to_issue - 1), addr.eq(addr + wb)]
            with m.If(self.bus.resp_valid & (to_recv != 0)):
                m.d.sync += [to_recv.eq(to_recv - 1), widx.eq(widx + 1),
                             self.instr.word_select(widx, self.bus_bits).eq(self.bus.resp_rdata)]
        return m


def _load_cfg() -> wiring.Signature:
    return field_signature(Op.LOAD)


def _store_cfg() -> wiring.Signature:
    return field_signature(Op.STORE)


class LoadEngine(wiring.Component):
    """LOAD: external memory → scratchpad lines (A, B, V, P) or unit constant records.

    Members
    -------
    go : In(1)
        Start; ``cfg`` must stay valid until ``busy`` falls.
    cfg : In(field_signature(Op.LOAD))
    busy : Out(1)
        From the cycle after ``go`` until the last line is written.
    bus : Out(mem_bus_signature)
    wr : Out
        ``en``, ``target``, ``bank``, ``addr`` (line or constant index), ``data`` (the line;
        V lines are unpacked to 32-bit sign-extended lanes).
    """

    def __init__(self, geometry: Geometry):
        g = self.g = geometry
        self.bus_bits = g.bus_bytes * 8
        self.max_wpl = max(g.words_per_line(t, 4) for t in (Target.V, Target.P, Target.LN_CONST))
        self.data_bits = max(self.bus_bits, g.lanes * 32, g.cols * RECORD_BYTES * 8)
        self.addr_bits = 24
        super().__init__({
            "go": In(1),
            "cfg": In(_load_cfg()),
            "busy": Out(1),
            "bus": Out(mem_bus_signature(self.bus_bits)),
            "wr": Out(wiring.Signature({
                "en": Out(1), "target": Out(3), "bank": Out(_bits(max(g.rows, g.cols))),
                "addr": Out(self.addr_bits), "data": Out(self.data_bits)})),
        })

    def elaborate(self, platform):
        m = Module()
        g, cfg = self.g, self.cfg
        wb, W = g.bus_bytes, self.bus_bits

        # per-instruction constants, latched on go
        wpl = Signal(range(self.max_wpl + 1))
        row_words = Signal(32)
        banks_m1 = Signal(range(max(g.rows, g.cols)))
        target = Signal(3)
        eb = Signal(2)
        wpl_now = Signal.like(wpl)
        banks_now = Signal.like(banks_m1)
        # decoded only in the go cycle: an always-block whose only input never changes is
        # not evaluated at time 0 by every simulator (Icarus leaves it X)
        with m.Switch(Mux(self.go, cfg.target, Target.O)):
            for t in Target:
                if t == Target.O:
                    continue
                with m.Case(int(t)):
                    if t == Target.V:
                        m.d.comb += wpl_now.eq(Mux(cfg.ebytes_log2 == 0, g.words_per_line(t, 1),
                                                   Mux(cfg.ebytes_log2 == 1, g.words_per_line(t, 2),
                                                       g.words_per_line(t, 4))))
                    else:
                        m.d.comb += wpl_now.eq(g.words_per_line(t))
                    m.d.comb += banks_now.eq({Target.A: g.rows, Target.B: g.cols}.get(t, 1) - 1)

        # request side
        rq_rows = Signal(16)
        rq_left = Signal(32)
        addr = Signal(ADDR_BITS)
        row_addr = Signal(ADDR_BITS)
        m.d.comb += [self.bus.req_valid.eq(rq_rows != 0), self.bus.req_addr.eq(addr),
                     self.bus.req_we.eq(0)]

        # response side
        rs_rows = Signal(16)
        wi = Signal(range(self.max_wpl))
        li = Signal(16)
        bank = Signal.like(banks_m1)
        base = Signal(self.addr_bits)
        buf = Signal(self.max_wpl * W)
        m.d.comb += self.busy.eq(rs_rows != 0)

        with m.If(self.go):
            rw = Signal(32)
            m.d.comb += rw.eq(cfg.row_lines * wpl_now)
            nonempty = (cfg.rows != 0) & (rw != 0)
            m.d.sync += [
                wpl.eq(wpl_now), row_words.eq(rw), banks_m1.eq(banks_now), target.eq(cfg.target),
                eb.eq(cfg.ebytes_log2),
                rq_rows.eq(Mux(nonempty, cfg.rows, 0)), rq_left.eq(rw),
                addr.eq(cfg.ext_addr), row_addr.eq(cfg.ext_addr),
                rs_rows.eq(Mux(nonempty, cfg.rows, 0)), wi.eq(0), li.eq(0), bank.eq(0),
                base.eq(cfg.spad_addr),
            ]
        with m.Else():
            with m.If(self.bus.req_valid & self.bus.req_ready):
                with m.If(rq_left == 1):
                    m.d.sync += [rq_rows.eq(rq_rows - 1), rq_left.eq(row_words),
                                 row_addr.eq(row_addr + cfg.ext_stride),
                                 addr.eq(row_addr + cfg.ext_stride)]
                with m.Else():
                    m.d.sync += [rq_left.eq(rq_left - 1), addr.eq(addr + wb)]

            # the line completed by this response: earlier words from buf, this word in place
            words = [Mux(wi == w, self.bus.resp_rdata, buf.word_select(w, W)) for w in range(self.max_wpl)]
            line = Cat(*words)
            unpacked = Signal(g.lanes * 32)
            for l in range(g.lanes):
                sel = Mux(eb == 0, line[l * 8:(l + 1) * 8].as_signed(),
                          Mux(eb == 1, line[l * 16:(l + 1) * 16].as_signed(), line[l * 32:(l + 1) * 32].as_signed()))
                m.d.comb += unpacked[l * 32:(l + 1) * 32].eq(sel)
            m.d.comb += [
                self.wr.target.eq(target), self.wr.bank.eq(bank), self.wr.addr.eq(base + li),
                self.wr.data.eq(Mux(target == Target.V, unpacked, line)),
            ]
            with m.If(self.bus.resp_valid & (rs_rows != 0)):
                m.d.sync += buf.word_select(wi, W).eq(self.bus.resp_rdata)
                with m.If(wi == wpl - 1):
                    m.d.comb += self.wr.en.eq(1)
                    m.d.sync += wi.eq(0)
                    with m.If(li == cfg.row_lines - 1):
                        m.d.sync += [li.eq(0), rs_rows.eq(rs_rows - 1)]
                        with m.If(bank == banks_m1):
                            m.d.sync += [bank.eq(0), base.eq(base + cfg.row_lines)]
                        with m.Else():
                            m.d.sync += bank.eq(bank + 1)
                    with m.Else():
                        m.d.sync += li.eq(li + 1)
                with m.Else():
                    m.d.sync += wi.eq(wi + 1)
        return m


class StoreEngine(wiring.Component):
    """STORE: O or V scratchpad lines → external memory, lanes narrowed to 1/2/4 bytes.

    Members
    -------
    go, cfg (field_signature(Op.STORE)), busy : as :class:`LoadEngine`
    bus : Out(mem_bus_signature)
    o_rd, v_rd : Out(read_port_signature)
        Read ports of the O (``cols`` lanes) and V (``lanes`` lanes) scratchpads.
    """

    def __init__(self, geometry: Geometry):
        g = self.g = geometry
        self.bus_bits = g.bus_bytes * 8
        super().__init__({
            "go": In(1),
            "cfg": In(_store_cfg()),
            "busy": Out(1),
            "bus": Out(mem_bus_signature(self.bus_bits)),
            "o_rd": Out(read_port_signature(g.cols * 32, g.o_depth, 1)),
            "v_rd": Out(read_port_signature(g.lanes * 32, g.v_depth, 1)),
            "aw": Out(wiring.Signature({"en": Out(1), "bank": Out(_bits(g.rows)), "addr": Out(24),
                                        "data": Out(self.bus_bits)})),
        })

    def _narrow(self, m, line, lanes, eb_log2, elem_base, row_elems, w):
        """(word w of the narrowed line, its byte strobes) for a line of ``lanes`` 32-bit lanes."""
        g = self.g
        wb, W = g.bus_bytes, self.bus_bits
        valid = [Signal(name=f"lane_ok{lanes}_{l}") for l in range(lanes)]
        for l in range(lanes):
            m.d.comb += valid[l].eq(elem_base + l < row_elems)
        word = Signal(W, name=f"nword{lanes}")
        strb = Signal(wb, name=f"nstrb{lanes}")
        for log, e in enumerate((1, 2, 4)):
            nwords = -(-lanes * e // wb)
            data_bits = Cat(*[line[l * 32:l * 32 + 8 * e] for l in range(lanes)])
            data_bits = Cat(data_bits, Const(0, nwords * W - lanes * 8 * e))
            strobes = Cat(*[valid[p // e] if p // e < lanes else Const(0, 1) for p in range(nwords * wb)])
            with m.If(eb_log2 == log):
                m.d.comb += [word.eq(data_bits.word_select(w, W)), strb.eq(strobes.word_select(w, wb))]
        return word, strb

    def elaborate(self, platform):
        m = Module()
        g, cfg = self.g, self.cfg
        wb = g.bus_bytes
        is_v = Signal()
        wpl = Signal(8)
        lanes = Signal(range(max(g.cols, g.lanes) + 1))
        rows = Signal(16)
        wi = Signal(8)
        li = Signal(16)
        line_ptr = Signal(24)
        addr = Signal(ADDR_BITS)
        row_addr = Signal(ADDR_BITS)
        elem_base = Signal(17)

        wpl_now = Signal(8)
        pitch_now = Signal(24)          # A lines a row of a STORE into A spans (row_lines · wpl)
        is_v_now = cfg.target == Target.V
        for log, e in enumerate((1, 2, 4)):
            wv, wo = g.words_per_line(Target.V, e), g.words_per_line(Target.O, e)
            with m.If(cfg.ebytes_log2 == log):
                m.d.comb += [wpl_now.eq(Mux(is_v_now, wv, wo)),
                             pitch_now.eq(Mux(is_v_now, cfg.row_lines * wv, cfg.row_lines * wo))]
        row_line0 = Signal(24)          # the row's first O/V line
        a_pitch = Signal(24)

        # synchronous scratchpad reads: address the line of the next cycle
        line_ptr_n = Signal(24)
        m.d.comb += line_ptr_n.eq(line_ptr)
        m.d.sync += line_ptr.eq(line_ptr_n)
        m.d.comb += [self.o_rd.addr.eq(line_ptr_n), self.v_rd.addr.eq(line_ptr_n)]
        o_word, o_strb = self._narrow(m, self.o_rd.data[0], g.cols, cfg.ebytes_log2, elem_base, cfg.row_elems, wi)
        v_word, v_strb = self._narrow(m, self.v_rd.data[0], g.lanes, cfg.ebytes_log2, elem_base, cfg.row_elems, wi)
        active = rows != 0
        # a row ends after its last word, or after the last word holding an element below
        # row_elems: the next word's first element (the next line's first lane after a line's
        # last word) is not one, so the words after it would carry no strobe
        lg = (wb - 1).bit_length()
        line_end = wi == wpl - 1
        word_step = Signal(16)
        for log in range(3):
            with m.If(cfg.ebytes_log2 == log):
                m.d.comb += word_step.eq((wi + 1) << (lg - log))
        next_elem = Signal(18)
        m.d.comb += next_elem.eq(elem_base + Mux(line_end, lanes, word_step))
        row_end = (line_end & (li == cfg.row_lines - 1)) | (next_elem >= cfg.row_elems)
        # into A: A's write port belongs to this engine, so a word goes every cycle; each row's
        # words fill A lines of one bank, rows taking the banks in turn (as LOAD places them)
        to_a = Signal()
        a_bank = Signal(_bits(g.rows))
        a_line = Signal(24)
        a_row0 = Signal(24)
        word = Mux(is_v, v_word, o_word)
        strb = Mux(is_v, v_strb, o_strb)
        fire = active & (to_a | self.bus.req_ready)
        m.d.comb += [
            self.busy.eq(active),
            self.bus.req_valid.eq(active & ~to_a), self.bus.req_we.eq(1), self.bus.req_addr.eq(addr),
            self.bus.req_wdata.eq(word), self.bus.req_wstrb.eq(strb),
            self.aw.en.eq(fire & to_a), self.aw.bank.eq(a_bank), self.aw.addr.eq(a_line),
            self.aw.data.eq(Cat(*[Mux(strb[b], word[8 * b:8 * b + 8], 0) for b in range(wb)])),
        ]
        with m.If(self.go):
            m.d.sync += [is_v.eq(is_v_now), wpl.eq(wpl_now),
                         lanes.eq(Mux(is_v_now, g.lanes, g.cols)),
                         rows.eq(Mux(cfg.row_lines != 0, cfg.rows, 0)), wi.eq(0), li.eq(0),
                         addr.eq(cfg.ext_addr), row_addr.eq(cfg.ext_addr), elem_base.eq(0),
                         row_line0.eq(cfg.spad_addr), a_pitch.eq(pitch_now),
                         to_a.eq(cfg.dst_a), a_bank.eq(0), a_line.eq(cfg.a_addr), a_row0.eq(cfg.a_addr)]
            m.d.comb += line_ptr_n.eq(cfg.spad_addr)
        with m.Elif(fire):
            m.d.sync += [wi.eq(wi + 1), addr.eq(addr + wb), a_line.eq(a_line + 1)]
            with m.If(row_end):
                m.d.sync += [wi.eq(0), li.eq(0), elem_base.eq(0), rows.eq(rows - 1),
                             row_line0.eq(row_line0 + cfg.row_lines),
                             row_addr.eq(row_addr + cfg.ext_stride), addr.eq(row_addr + cfg.ext_stride)]
                m.d.comb += line_ptr_n.eq(row_line0 + cfg.row_lines)
                # the next row: the next bank from this row's first line, or after the last
                # bank the lines following this row's (whole, even if trimmed) pitch
                with m.If(a_bank == g.rows - 1):
                    m.d.sync += [a_bank.eq(0), a_row0.eq(a_row0 + a_pitch), a_line.eq(a_row0 + a_pitch)]
                with m.Else():
                    m.d.sync += [a_bank.eq(a_bank + 1), a_line.eq(a_row0)]
            with m.Elif(line_end):
                m.d.sync += [wi.eq(0), elem_base.eq(elem_base + lanes), li.eq(li + 1)]
                m.d.comb += line_ptr_n.eq(line_ptr + 1)
        return m


class BusMux(wiring.Component):
    """Connects the external port to the one engine ``sel`` names (0..n-1); responses go to all."""

    def __init__(self, bus_bits: int, n: int):
        self.n = n
        members = {"sel": In(range(n)), "ext": Out(mem_bus_signature(bus_bits))}
        for i in range(n):
            members[f"m{i}"] = In(mem_bus_signature(bus_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for i in range(self.n):
            port = getattr(self, f"m{i}")
            m.d.comb += [port.resp_valid.eq(self.ext.resp_valid), port.resp_rdata.eq(self.ext.resp_rdata),
                         port.req_ready.eq(self.ext.req_ready & (self.sel == i))]
            with m.If(self.sel == i):
                m.d.comb += [self.ext.req_valid.eq(port.req_valid), self.ext.req_addr.eq(port.req_addr),
                             self.ext.req_we.eq(port.req_we), self.ext.req_wdata.eq(port.req_wdata),
                             self.ext.req_wstrb.eq(port.req_wstrb)]
        return m
