"""Vector unit: lookup table (GELU or any function of a <=8-bit code) and residual add.

One :class:`VectorUnit` executes one operation at a time over a stream of beats of
``lanes`` elements:

* ``OP_LUT``: ``y = lut[q − lo(lut_bits)]`` — exactly :func:`vit2hw.intops.apply_lut`
  (the table, one entry per input code, is written through ``lut_wr``);
* ``OP_RESIDUAL``: ``y = sat(round_shift(a·ma_c + b·mb_c + bias_c, s_c) + out_zp, out_bits)``
  — exactly :func:`vit2hw.intops.residual_add` with per-channel ``ma, mb, bias, s``
  (written through ``const_wr``, one channel per word).

The datapath is a four-register pipeline that stalls as a whole when the output is
not accepted, so it takes one beat per cycle and its timing is exact
(:func:`vector_cycles`). Channel ``c`` of a row lives in lane ``c % lanes`` of beat
``c // lanes``; rows are ``channels`` long, a multiple of ``lanes``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.vecops import ceil_log2, const_write_signature, saturate_expr

__all__ = [
    "OP_LUT",
    "OP_RESIDUAL",
    "VECTOR_PIPELINE_DEPTH",
    "VECTOR_START_CYCLES",
    "residual_const_layout",
    "VectorUnit",
    "vector_cycles",
]

OP_LUT = 0
OP_RESIDUAL = 1
#: registers between an accepted input beat and its output beat
VECTOR_PIPELINE_DEPTH = 4
#: cycles from the ``start`` strobe to the first cycle ``i.ready`` can be high
VECTOR_START_CYCLES = 1


def vector_cycles(n_elems: int, lanes: int = 1, op: int = OP_RESIDUAL) -> int:
    """Cycles from the first accepted input beat to the last output beat, both inclusive.

    Assumes the input is always valid and the output always ready. ``op`` does not
    change the timing (both operations share one pipeline); a partial last beat is
    padded by the producer and counts as a full beat.
    """
    if op not in (OP_LUT, OP_RESIDUAL):
        raise ValueError(f"unknown vector op {op}")
    beats = -(-int(n_elems) // int(lanes))
    if beats == 0:
        return 0
    return beats + VECTOR_PIPELINE_DEPTH


def residual_const_layout(m_width: int = 16, bias_width: int = 40,
                          shift_width: int = 6) -> data.StructLayout:
    """Word written per channel through ``const_wr`` (fields LSB first: ma, mb, bias, s)."""
    return data.StructLayout({
        "ma": signed(m_width),
        "mb": signed(m_width),
        "bias": signed(bias_width),
        "s": unsigned(shift_width),
    })


class VectorUnit(wiring.Component):
    """GELU lookup table and residual add over ``lanes`` elements per cycle.

    Parameters
    ----------
    lanes : int
        Elements per beat (a power of two).
    max_channels : int
        Depth of the per-channel constant memory; a multiple of ``lanes``.
    in_width : int
        Width of the signed inputs ``a`` and ``b`` (residual operands; LUT codes in ``a``).
    m_width, bias_width, shift_width : int
        Widths of the per-channel multipliers (signed), bias (signed) and shift (unsigned).
    out_width : int
        Width of the output lanes and of a table entry (signed).
    lut_in_bits : int
        Largest input code width the table covers (table depth ``2**lut_in_bits``).
    beats_width : int
        Width of the beat counter (``cfg.beats``).

    Attributes
    ----------
    cfg : In(...)
        ``op``, ``beats`` (beats to process), ``channels`` (row length, a multiple of
        ``lanes``), ``out_bits`` (residual saturation width, 1..out_width), ``out_zp``,
        ``lut_bits`` (table input width, 1..lut_in_bits). Sampled on ``start``.
    start : In(1)
        Strobe that begins an operation; ignored while ``busy``.
    busy : Out(1)
        High from the cycle after ``start`` until the last output beat is accepted.
    i : In(stream.Signature(StructLayout{a, b: ArrayLayout(signed(in_width), lanes)}))
    o : Out(stream.Signature(ArrayLayout(signed(out_width), lanes)))
    lut_wr : In(const_write_signature(lut_in_bits, signed(out_width)))
        ``addr`` = input code − most negative code (as in :func:`vit2hw.intops.apply_lut`).
    const_wr : In(const_write_signature(ceil_log2(max_channels), residual_const_layout(...)))
        ``addr`` = channel.
    """

    def __init__(self, lanes: int = 1, max_channels: int = 1024, in_width: int = 16,
                 m_width: int = 16, bias_width: int = 40, shift_width: int = 6,
                 out_width: int = 16, lut_in_bits: int = 8, beats_width: int = 24):
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError("lanes must be a power of two")
        if max_channels % lanes:
            raise ValueError("max_channels must be a multiple of lanes")
        if lut_in_bits > in_width:
            raise ValueError("lut_in_bits exceeds in_width")
        self.lanes = lanes
        self.max_channels = max_channels
        self.in_width = in_width
        self.m_width = m_width
        self.bias_width = bias_width
        self.shift_width = shift_width
        self.out_width = out_width
        self.lut_in_bits = lut_in_bits
        self.beats_width = beats_width
        self.const_layout = residual_const_layout(m_width, bias_width, shift_width)
        lane_vec = data.ArrayLayout(signed(in_width), lanes)
        super().__init__({
            "cfg": In(wiring.Signature({
                "op": Out(1),
                "beats": Out(beats_width),
                "channels": Out(range(max_channels + 1)),
                "out_bits": Out(range(out_width + 1)),
                "out_zp": Out(signed(out_width)),
                "lut_bits": Out(range(lut_in_bits + 1)),
            })),
            "start": In(1),
            "busy": Out(1),
            "i": In(stream.Signature(data.StructLayout({"a": lane_vec, "b": lane_vec}))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_width), lanes))),
            "lut_wr": In(const_write_signature(lut_in_bits, signed(out_width))),
            "const_wr": In(const_write_signature(ceil_log2(max_channels), self.const_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        groups = self.max_channels // L
        lane_bits = (L - 1).bit_length()

        # ---- operation registers, sampled on start
        op = Signal(1)
        channels = Signal.like(self.cfg.channels)
        out_bits = Signal.like(self.cfg.out_bits)
        out_zp = Signal.like(self.cfg.out_zp)
        lut_bits = Signal.like(self.cfg.lut_bits)
        in_left = Signal(self.beats_width)
        out_left = Signal(self.beats_width)
        group = Signal(range(groups))
        chan0 = Signal(range(self.max_channels + L))   # channel of lane 0 in this beat

        m.d.comb += self.busy.eq(out_left != 0)
        with m.If(self.start & ~self.busy):
            m.d.sync += [
                op.eq(self.cfg.op), channels.eq(self.cfg.channels),
                out_bits.eq(self.cfg.out_bits), out_zp.eq(self.cfg.out_zp),
                lut_bits.eq(self.cfg.lut_bits),
                in_left.eq(self.cfg.beats), out_left.eq(self.cfg.beats),
                group.eq(0), chan0.eq(0),
            ]

        # ---- constant memories: one per lane (channel c -> lane c % L, row c // L)
        const_rd = []
        for lane in range(L):
            mem = memory.Memory(shape=self.const_layout, depth=groups, init=[])
            m.submodules[f"const_mem{lane}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="comb")
            m.d.comb += [
                wp.addr.eq(self.const_wr.addr >> lane_bits),
                wp.data.eq(self.const_wr.data),
                wp.en.eq(self.const_wr.en & (self.const_wr.addr[:lane_bits] == lane
                                             if lane_bits else self.const_wr.en)),
                rp.addr.eq(group),
            ]
            const_rd.append(rp.data)

        # one copy of the table per lane, all written together: a single memory with L read
        # ports makes Yosys' memory_libmap enumerate port assignments exponentially (12 or
        # more ports exhaust its memory); FPGAs replicate multi-read-port tables anyway
        lut_offset = (Const(1, self.lut_in_bits + 1) << lut_bits) >> 1
        lut_rd = []
        for lane in range(L):
            lut = memory.Memory(shape=signed(self.out_width), depth=1 << self.lut_in_bits, init=[])
            m.submodules[f"lut{lane}"] = lut
            lut_wp = lut.write_port()
            m.d.comb += [lut_wp.addr.eq(self.lut_wr.addr), lut_wp.data.eq(self.lut_wr.data),
                         lut_wp.en.eq(self.lut_wr.en)]
            rp = lut.read_port(domain="comb")
            code = self.i.payload.a[lane][:self.lut_in_bits]
            m.d.comb += rp.addr.eq((code + lut_offset)[:self.lut_in_bits])
            lut_rd.append(rp.data)

        # ---- pipeline control: all stages move together unless the output stalls
        valid = [Signal(name=f"valid{k}") for k in range(VECTOR_PIPELINE_DEPTH)]
        advance = Signal()
        in_fire = Signal()
        m.d.comb += [
            advance.eq(~valid[-1] | self.o.ready),
            self.i.ready.eq(advance & (in_left != 0)),
            in_fire.eq(self.i.valid & self.i.ready),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(in_fire):
            m.d.sync += in_left.eq(in_left - 1)
            with m.If(chan0 + L >= channels):
                m.d.sync += [group.eq(0), chan0.eq(0)]
            with m.Else():
                m.d.sync += [group.eq(group + 1), chan0.eq(chan0 + L)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += out_left.eq(out_left - 1)
        with m.If(advance):
            m.d.sync += valid[0].eq(in_fire)
            for k in range(1, VECTOR_PIPELINE_DEPTH):
                m.d.sync += valid[k].eq(valid[k - 1])

        prod_w = self.in_width + self.m_width
        acc_w = max(prod_w + 1, self.bias_width, (1 << self.shift_width) - 1) + 2
        for lane in range(L):
            c = const_rd[lane]
            # stage 0: operands, constants and the table entry
            a0 = Signal(signed(self.in_width), name=f"a0_{lane}")
            b0 = Signal(signed(self.in_width), name=f"b0_{lane}")
            k0 = Signal(self.const_layout, name=f"k0_{lane}")
            t0 = Signal(signed(self.out_width), name=f"t0_{lane}")
            # stage 1: products
            pa1 = Signal(signed(prod_w), name=f"pa1_{lane}")
            pb1 = Signal(signed(prod_w), name=f"pb1_{lane}")
            bias1 = Signal(signed(self.bias_width), name=f"bias1_{lane}")
            s1 = Signal(self.shift_width, name=f"s1_{lane}")
            t1 = Signal(signed(self.out_width), name=f"t1_{lane}")
            # stage 2: rounded sum
            acc2 = Signal(signed(acc_w), name=f"acc2_{lane}")
            s2 = Signal(self.shift_width, name=f"s2_{lane}")
            t2 = Signal(signed(self.out_width), name=f"t2_{lane}")
            half = (Const(1, 1) << s1) >> 1
            y = saturate_expr((acc2 >> s2) + out_zp, out_bits, self.out_width)
            with m.If(advance):
                m.d.sync += [
                    a0.eq(self.i.payload.a[lane]), b0.eq(self.i.payload.b[lane]),
                    k0.eq(c), t0.eq(lut_rd[lane]),
                    pa1.eq(a0 * k0.ma), pb1.eq(b0 * k0.mb), bias1.eq(k0.bias),
                    s1.eq(k0.s), t1.eq(t0),
                    acc2.eq(pa1 + pb1 + bias1 + half), s2.eq(s1), t2.eq(t1),
                    self.o.payload[lane].eq(Mux(op == OP_LUT, t2, y)),
                ]
        return m
