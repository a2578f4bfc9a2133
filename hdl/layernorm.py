"""Shift-LayerNorm unit: integer PTF LayerNorm, bit-exact with :func:`vit2hw.intops.ptf_layernorm`.

Per row of ``C`` input codes ``q`` (``lanes`` per beat, channel ``c`` in lane
``c % lanes`` of beat ``c // lanes``):

1. *stats pass* — the row is written into an internal row buffer while
   ``x_c = q_c << alpha_c``, ``S = Σx`` and ``Σx²`` accumulate;
2. *scalar phase* — ``Q = C·Σx² − S²``; ``r = isqrt(Q)`` by a restoring square root (two
   root bits per cycle, floor-exact); ``e = bit_length(r)``;
   ``inv = floor(2**(e+15) / r)`` by a 9-cycle restoring divider (17 bits) on the normalized
   ``r`` (``r == 0`` gives ``inv = 0``);
3. *output pass* — the buffered row is read back through a 7-register pipeline:
   ``n = round_shift((C·x − S)·inv, max(e,1) + 4)`` and
   ``y = sat(round_shift(n·gm_c + bb_c, gs_c) + out_zp, out_bits)``.

Rows are pipelined over three row buffers in three stages that run at the same time,
each on its own row: the *load* stage (pass 1) fills one buffer while the *scalar* stage
(phase 2) works on the row before, whose codes wait in the second buffer, and the *back*
(pass 3) reads the third. The load stage hands a row (its buffer, ``S`` and ``Σx²``) to the
scalar stage the cycle after its last beat once that stage is free; the scalar stage hands
it (buffer, ``S``, the reciprocal and the shift) to the back once its reciprocal is ready and
the back is issuing the previous row's last beat or idle; those scalars travel down the
output pipeline with the beats, so a row's output pass never waits for the previous row's
to drain. A row therefore costs the longer of one pass and the scalar phase, not their
sum. Timing is data independent (:func:`layernorm_cycles`).
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from vit2hw.intops import LN_NORM_FRAC, LN_RECIP_FRAC
from hdl.vecops import (ceil_log2, const_write_signature, restoring_div_step, restoring_div_steps, round_shift_expr,
                        saturate_expr)

__all__ = [
    "LN_OUT_PIPELINE_DEPTH",
    "LN_START_CYCLES",
    "LN_RECIP_BITS",
    "layernorm_const_layout",
    "layernorm_sqrt_bits",
    "layernorm_cycles",
    "LayerNormUnit",
]

#: registers from reading a buffered beat to the output register
LN_OUT_PIPELINE_DEPTH = 7
#: cycles from the ``start`` strobe to the first cycle ``i.ready`` can be high
LN_START_CYCLES = 1
#: quotient bits of the reciprocal: inv lies in (2**15, 2**16]
LN_RECIP_BITS = LN_RECIP_FRAC + 2
#: root / quotient bits settled per cycle (two chained restoring steps)
LN_STEPS = 2
#: fixed cycles per row besides the two passes and the square root:
#: drain + Q + (bit_length, divider set-up) + divider + hand-over to the output pass
_LN_ROW_OVERHEAD = 1 + 1 + 1 + -(-LN_RECIP_BITS // LN_STEPS) + 1


def layernorm_sqrt_bits(max_channels: int, in_bits: int = 8) -> int:
    """Root bits (= square-root cycles) for rows up to ``max_channels`` of ``in_bits`` codes."""
    xmax = 1 << (in_bits + 2)            # |q << 3| <= 2**(in_bits-1) * 8
    qmax = max_channels * max_channels * xmax * xmax
    return (qmax.bit_length() + 1) // 2


def layernorm_cycles(channels: int, rows: int = 1, lanes: int = 1, max_channels: int = 1024,
                     in_bits: int = 8) -> int:
    """Cycles from the first accepted input beat to the last output beat (both counted).

    Assumes the input is always valid and the output always ready. The first row takes
    ``B = C/lanes`` beats in, its scalar phase (``ceil(layernorm_sqrt_bits / 2)`` + 13
    cycles, from the stats drain to the hand-over), its ``B`` output issues and the output
    pipeline. Every further row adds the longer of the load stage's ``B + 1`` cycles (its
    beats and the drain) and the scalar stage's ``ceil(layernorm_sqrt_bits / 2)`` + 12
    (the three stages each work on their own row).
    """
    if channels % lanes or channels < 1:
        raise ValueError("channels must be a positive multiple of lanes")
    if rows < 1:
        return 0
    beats = channels // lanes
    scalar = -(-layernorm_sqrt_bits(max_channels, in_bits) // LN_STEPS) + _LN_ROW_OVERHEAD
    first = beats + scalar + beats + LN_OUT_PIPELINE_DEPTH
    return first + (rows - 1) * max(beats + 1, scalar - 1)


def layernorm_const_layout(gm_width: int = 16, bias_width: int = 32,
                           shift_width: int = 6) -> data.StructLayout:
    """Word written per channel through ``const_wr`` (fields LSB first: alpha, gm, bb, gs)."""
    return data.StructLayout({
        "alpha": unsigned(2),
        "gm": signed(gm_width),
        "bb": signed(bias_width),
        "gs": unsigned(shift_width),
    })


class LayerNormUnit(wiring.Component):
    """Shift-LayerNorm over rows of up to ``max_channels`` codes, ``lanes`` codes per cycle.

    Parameters
    ----------
    lanes : int
        Codes per beat (a power of two); the row length must be a multiple of it.
    max_channels : int
        Row buffer and constant memory depth (multiple of ``lanes``).
    in_bits : int
        Width of the signed input codes.
    out_width : int
        Width of the signed output lanes (largest ``cfg.out_bits``).
    gm_width, bias_width, shift_width : int
        Widths of the per-channel affine constants ``gm`` (signed), ``bb`` (signed), ``gs``.
    rows_width : int
        Width of ``cfg.rows``.

    Attributes
    ----------
    cfg : In(...)
        ``channels`` (C, ``lanes``..``max_channels``), ``rows``, ``out_bits`` (1..out_width),
        ``out_zp``. Sampled on ``start``.
    start : In(1)
        Begins an operation of ``rows`` rows; ignored while ``busy``.
    busy : Out(1)
        High from the cycle after ``start`` until the last output beat is accepted.
    i : In(stream.Signature(ArrayLayout(signed(in_bits), lanes)))
        Each row exactly once, ``C/lanes`` beats per row, rows back to back.
    o : Out(stream.Signature(ArrayLayout(signed(out_width), lanes)))
    const_wr : In(const_write_signature(ceil_log2(max_channels), layernorm_const_layout(...)))
        ``addr`` = channel; word = ``alpha | gm | bb | gs`` (see :func:`layernorm_const_layout`).
    """

    def __init__(self, lanes: int = 1, max_channels: int = 1024, in_bits: int = 8,
                 out_width: int = 16, gm_width: int = 16, bias_width: int = 32,
                 shift_width: int = 6, rows_width: int = 16):
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError("lanes must be a power of two")
        if max_channels % lanes or max_channels < 2:
            raise ValueError("max_channels must be a multiple of lanes and at least 2")
        self.lanes = lanes
        self.max_channels = max_channels
        self.in_bits = in_bits
        self.out_width = out_width
        self.gm_width = gm_width
        self.bias_width = bias_width
        self.shift_width = shift_width
        self.rows_width = rows_width
        self.sqrt_bits = layernorm_sqrt_bits(max_channels, in_bits)
        self.const_layout = layernorm_const_layout(gm_width, bias_width, shift_width)
        super().__init__({
            "cfg": In(wiring.Signature({
                "channels": Out(range(max_channels + 1)),
                "rows": Out(rows_width),
                "out_bits": Out(range(out_width + 1)),
                "out_zp": Out(signed(out_width)),
            })),
            "start": In(1),
            "busy": Out(1),
            "i": In(stream.Signature(data.ArrayLayout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_width), lanes))),
            "const_wr": In(const_write_signature(ceil_log2(max_channels), self.const_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        lane_bits = (L - 1).bit_length()
        groups = self.max_channels // L
        wr_bits = self.sqrt_bits
        cmax = self.max_channels
        xw = self.in_bits + 3                                   # x = q << alpha, signed
        sw = xw + ceil_log2(cmax + 1) + 1                       # S, signed
        ssw = 2 * (xw - 1) + ceil_log2(cmax + 1) + 1            # Σx², unsigned
        qw = 2 * wr_bits                                        # Q, unsigned
        dw = xw + ceil_log2(cmax + 1) + 2                       # C·x − S, signed
        pw = dw + LN_RECIP_BITS + 1                             # (C·x − S)·inv, signed
        # |C·x_c − S| <= sqrt(C·Q) < 2·sqrt(C)·r, so |n| <= sqrt(C)·2**(NORM_FRAC+1) + 1
        nw = LN_NORM_FRAC + 1 + math.ceil(math.log2(cmax) / 2) + 2
        shw = ceil_log2(wr_bits + LN_RECIP_FRAC - LN_NORM_FRAC + 2)
        tw = nw + self.gm_width
        uw = max(tw + 1, self.bias_width, (1 << self.shift_width) - 1) + 2

        # ---- operation registers
        channels = Signal.like(self.cfg.channels)
        rows_left = Signal(self.rows_width)
        out_bits = Signal.like(self.cfg.out_bits)
        out_zp = Signal.like(self.cfg.out_zp)
        beats = Signal(range(groups + 1))                       # C / lanes

        # ---- memories: three row buffers (one filling, one waiting for its scalars, one being
        # read) and per-lane constants
        f_buf, c_buf, b_buf = (Signal(range(3), name=n) for n in ("f_buf", "c_buf", "b_buf"))
        buf_wps, buf_rds = [], []
        for n in range(3):
            rowbuf = memory.Memory(shape=data.ArrayLayout(signed(self.in_bits), L), depth=groups, init=[])
            m.submodules[f"rowbuf{n}"] = rowbuf
            buf_wps.append(rowbuf.write_port())
            buf_rds.append(rowbuf.read_port(domain="comb"))
        buf_rd = data.View(data.ArrayLayout(signed(self.in_bits), L),
                           Mux(b_buf == 2, buf_rds[2].data.as_value(),
                               Mux(b_buf == 1, buf_rds[1].data.as_value(), buf_rds[0].data.as_value())))
        k_in, k_out = [], []
        for lane in range(L):
            mem = memory.Memory(shape=self.const_layout, depth=groups, init=[])
            m.submodules[f"const_mem{lane}"] = mem
            wp = mem.write_port()
            lane_hit = (self.const_wr.addr[:lane_bits] == lane) if lane_bits else Const(1)
            m.d.comb += [wp.addr.eq(self.const_wr.addr >> lane_bits), wp.data.eq(self.const_wr.data),
                         wp.en.eq(self.const_wr.en & lane_hit)]
            k_in.append(mem.read_port(domain="comb"))
            k_out.append(mem.read_port(domain="comb"))

        # ---- statistics pass
        g_in = Signal(range(groups + 1))
        xa = [Signal(signed(xw), name=f"xa{lane}") for lane in range(L)]
        xa_valid = Signal()
        s1 = Signal(signed(sw))
        s2 = Signal(ssw)
        in_fire = Signal()
        m.d.comb += in_fire.eq(self.i.valid & self.i.ready)
        for n, wp in enumerate(buf_wps):
            m.d.comb += [wp.addr.eq(g_in), wp.data.eq(self.i.payload), wp.en.eq(in_fire & (f_buf == n))]
        for lane in range(L):
            m.d.comb += k_in[lane].addr.eq(g_in)
        m.d.sync += xa_valid.eq(in_fire)
        with m.If(in_fire):
            m.d.sync += [xa[lane].eq(self.i.payload[lane] << k_in[lane].data.alpha) for lane in range(L)]
        sum_x = sum(xa[lane] for lane in range(L))
        sum_xx = sum(xa[lane] * xa[lane] for lane in range(L))

        # ---- scalar phase registers (c_s1, c_s2: the scalar stage's row's sums)
        c_s1 = Signal(signed(sw))
        c_s2 = Signal(ssw)
        q = Signal(qw)
        qsh = Signal(qw)                         # Q shifted left two bits per root step
        root = Signal(wr_bits)
        rem = Signal(wr_bits + 2)
        step = Signal(range(max(wr_bits, LN_RECIP_BITS) + 1))
        e = Signal(range(wr_bits + 1))
        rn = Signal(wr_bits)                     # r << (wr_bits − e): leading one at the top
        drem = Signal(wr_bits + 1)
        quo = Signal(LN_RECIP_BITS)
        # values the output pass uses, latched when a row's output pass begins; they travel
        # down the output pipeline with the row's beats (s0; inv0, inv1; sh0..sh2), so the
        # next row's output pass can begin while this row's last beats are still in it
        s_out = Signal(signed(sw))
        inv_out = Signal(LN_RECIP_BITS)
        sh_out = Signal(shw)
        s0 = Signal(signed(sw))
        inv0, inv1 = Signal(LN_RECIP_BITS), Signal(LN_RECIP_BITS)
        sh0, sh1, sh2 = Signal(shw), Signal(shw), Signal(shw)

        # bit_length(root): index of the leading one plus one
        # bit_length(root) and its leading zeros, as a mux chain (no process: Icarus
        # evaluates continuous assignments at time zero, processes only on a change)
        bitlen_v, lz_v = Const(0, range(wr_bits + 1)), Const(wr_bits, range(wr_bits + 1))
        for b in range(wr_bits):
            bitlen_v = Mux(root[b], b + 1, bitlen_v)
            lz_v = Mux(root[b], wr_bits - 1 - b, lz_v)
        bitlen = Signal(range(wr_bits + 1))
        lead_zeros = Signal(range(wr_bits + 1))
        m.d.comb += [bitlen.eq(bitlen_v), lead_zeros.eq(lz_v)]

        # ---- output pipeline (stalls as a whole when the output is not accepted)
        depth = LN_OUT_PIPELINE_DEPTH
        valid = [Signal(name=f"pv{k}") for k in range(depth)]
        advance = Signal()
        issue = Signal()
        g_out = Signal(range(groups + 1))
        pipe_empty = Signal()
        m.d.comb += [
            advance.eq(~valid[-1] | self.o.ready),
            self.o.valid.eq(valid[-1]),
            pipe_empty.eq(~Cat(*valid).any()),
        ]
        for rp in buf_rds:
            m.d.comb += rp.addr.eq(g_out)
        for lane in range(L):
            m.d.comb += k_out[lane].addr.eq(g_out)
        with m.If(advance):
            m.d.sync += valid[0].eq(issue)
            m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, depth)]
            m.d.sync += [s0.eq(s_out), inv0.eq(inv_out), inv1.eq(inv0), sh0.eq(sh_out), sh1.eq(sh0),
                         sh2.eq(sh1)]

        for lane in range(L):
            kr = k_out[lane].data
            q0 = Signal(signed(self.in_bits), name=f"q0_{lane}")
            k0 = Signal(self.const_layout, name=f"k0_{lane}")
            d1 = Signal(signed(dw), name=f"d1_{lane}")
            k1 = Signal(self.const_layout, name=f"k1_{lane}")
            p2 = Signal(signed(pw), name=f"p2_{lane}")
            k2 = Signal(self.const_layout, name=f"k2_{lane}")
            n3 = Signal(signed(nw), name=f"n3_{lane}")
            k3 = Signal(self.const_layout, name=f"k3_{lane}")
            t4 = Signal(signed(tw), name=f"t4_{lane}")
            k4 = Signal(self.const_layout, name=f"k4_{lane}")
            u5 = Signal(signed(uw), name=f"u5_{lane}")
            gs5 = Signal(self.shift_width, name=f"gs5_{lane}")
            x0 = q0 << k0.alpha
            with m.If(advance):
                m.d.sync += [
                    q0.eq(buf_rd[lane]), k0.eq(kr),
                    d1.eq(channels * x0 - s0), k1.eq(k0),
                    p2.eq(d1 * inv1), k2.eq(k1),
                    n3.eq(round_shift_expr(p2, sh2)), k3.eq(k2),
                    t4.eq(n3 * k3.gm), k4.eq(k3),
                    u5.eq(t4 + k4.bb + ((Const(1, 1) << k4.gs) >> 1)), gs5.eq(k4.gs),
                    self.o.payload[lane].eq(saturate_expr((u5 >> gs5) + out_zp, out_bits,
                                                          self.out_width)),
                ]

        # ---- control
        def begin_row():
            return [g_in.eq(0), s1.eq(0), s2.eq(0)]

        def accept_op():
            # latch the operation's scalars on start
            return [
                channels.eq(self.cfg.channels), rows_left.eq(self.cfg.rows),
                out_bits.eq(self.cfg.out_bits), out_zp.eq(self.cfg.out_zp),
                beats.eq(self.cfg.channels >> lane_bits), *begin_row(),
            ]

        # the load stage (stats pass), the scalar stage and the back (output pass) work on
        # different rows: the load stage hands a row over the cycle after its last beat (its
        # sums complete with that beat's terms) once the scalar stage is free, the scalar stage
        # hands a row over when its reciprocal is ready and the back is free
        back_free = Signal()
        handover = Signal()
        sc_free = Signal()
        l_hand = Signal()
        with m.FSM(name="ln") as fsm:
            def hand_row():
                m.d.comb += l_hand.eq(1)
                m.d.sync += [f_buf.eq(Mux(f_buf == 2, 0, f_buf + 1)), rows_left.eq(rows_left - 1),
                             *begin_row()]
                with m.If(rows_left == 1):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "LOAD"
            with m.State("IDLE"):
                with m.If(self.start & ~self.busy):
                    m.d.sync += accept_op()
                    with m.If(self.cfg.rows != 0):
                        m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(xa_valid):
                    m.d.sync += [s1.eq(s1 + sum_x), s2.eq(s2 + sum_xx)]
                with m.If(in_fire):
                    m.d.sync += g_in.eq(g_in + 1)
                    with m.If(g_in + 1 == beats):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                # the last beat's terms are in xa: the sums are complete with them
                with m.If(sc_free):
                    m.d.sync += [c_s1.eq(s1 + sum_x), c_s2.eq(s2 + sum_xx), c_buf.eq(f_buf)]
                    hand_row()
                with m.Else():
                    m.d.sync += [s1.eq(s1 + sum_x), s2.eq(s2 + sum_xx)]
                    m.next = "FULL"
            with m.State("FULL"):
                with m.If(sc_free):
                    m.d.sync += [c_s1.eq(s1), c_s2.eq(s2), c_buf.eq(f_buf)]
                    hand_row()
        with m.FSM(name="ln_scalar") as scal:
            with m.State("IDLE"):
                m.d.comb += sc_free.eq(1)
                with m.If(l_hand):
                    m.next = "QCALC"
            with m.State("QCALC"):
                qv = (channels * c_s2 - c_s1 * c_s1)[:qw]
                m.d.sync += [q.eq(qv), qsh.eq(qv), root.eq(0), rem.eq(0), step.eq(0)]
                m.next = "SQRT"
            with m.State("SQRT"):
                def root_bit(qs, rm, rt):
                    cand = Cat(qs[qw - 2:qw], rm)[:wr_bits + 2]     # (rem << 2) | next two bits
                    trial = Cat(Const(1, 2), rt)[:wr_bits + 2]      # (root << 2) | 1
                    ge = cand >= trial
                    return ((qs << 2)[:qw], Mux(ge, cand - trial, cand)[:wr_bits + 2],
                            Cat(ge, rt)[:wr_bits])
                one = root_bit(qsh, rem, root)
                two = root_bit(*one)
                sqrt_cycles = -(-wr_bits // LN_STEPS)
                # an odd root width settles one bit in the last cycle
                single = (step == sqrt_cycles - 1) if wr_bits % LN_STEPS else False
                for reg, a, b in zip((qsh, rem, root), one, two):
                    m.d.sync += reg.eq(Mux(single, a, b))
                m.d.sync += step.eq(step + 1)
                with m.If(step == sqrt_cycles - 1):
                    m.next = "RECIP"
            with m.State("RECIP"):
                m.d.sync += [
                    e.eq(bitlen),
                    rn.eq(root << lead_zeros),
                    drem.eq(1 << (wr_bits - 2)),                    # 2**(wr_bits+15) >> 17
                    quo.eq(0), step.eq(0),
                ]
                m.next = "DIV"
            with m.State("DIV"):
                div_cycles = -(-LN_RECIP_BITS // LN_STEPS)
                if LN_RECIP_BITS % LN_STEPS:        # the odd last bit settles alone
                    with m.If(step == div_cycles - 1):
                        m.d.sync += restoring_div_step(drem, quo, rn)
                    with m.Else():
                        m.d.sync += restoring_div_steps(drem, quo, rn, LN_STEPS)
                else:
                    m.d.sync += restoring_div_steps(drem, quo, rn, LN_STEPS)
                m.d.sync += step.eq(step + 1)
                with m.If(step == div_cycles - 1):
                    m.next = "HANDOVER"
            with m.State("HANDOVER"):
                with m.If(back_free):
                    m.d.comb += [handover.eq(1), sc_free.eq(1)]
                    m.d.sync += [
                        s_out.eq(c_s1),
                        inv_out.eq(Mux(e == 0, 0, quo)),
                        sh_out.eq(Mux(e == 0, 1, e) + (LN_RECIP_FRAC - LN_NORM_FRAC)),
                        g_out.eq(0), b_buf.eq(c_buf),
                    ]
                    with m.If(l_hand):
                        m.next = "QCALC"
                    with m.Else():
                        m.next = "IDLE"
        with m.FSM(name="ln_out") as back:
            with m.State("IDLE"):
                m.d.comb += back_free.eq(1)
                with m.If(handover):
                    m.next = "OUT"
            with m.State("OUT"):
                with m.If(issue):
                    with m.If(g_out + 1 == beats):
                        # the back takes the next row with this one's last beat
                        m.d.comb += back_free.eq(1)
                        with m.If(handover):
                            m.d.sync += g_out.eq(0)
                        with m.Else():
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += g_out.eq(g_out + 1)
        # outputs as plain expressions of the state (continuous assignments in Verilog)
        m.d.comb += [
            self.i.ready.eq(fsm.ongoing("LOAD")),
            issue.eq(back.ongoing("OUT") & advance),
            self.busy.eq(~fsm.ongoing("IDLE") | ~scal.ongoing("IDLE") | ~back.ongoing("IDLE") | ~pipe_empty),
        ]
        return m
