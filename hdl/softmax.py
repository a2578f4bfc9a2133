"""Softmax unit: integer softmax rows to 4-bit log2 codes or uniform 8-bit probabilities.

Two output modes, chosen per operation by ``cfg.mode``, share the exponential and the sum:

* :data:`SM_MODE_LOG2` — bit-exact with :func:`vit2hw.intops.log_int_softmax`
  (codes ``k``, probability ``2**-k``, for the array's shift-mode attention×V);
* :data:`SM_MODE_UNIFORM` — bit-exact with :func:`vit2hw.intops.uniform_softmax`
  (codes ``p`` in ``0..PROB_MAX``, probability ``p/PROB_MAX``, for multiply-mode A×V).

Per row of ``N`` scores ``t`` (``score·log2 e`` at ``2**-frac``, ``lanes`` per beat,
element ``j`` in lane ``j % lanes`` of beat ``j // lanes``):

1. *max pass* — the row is written into a row buffer while its maximum accumulates;
2. *exp pass* — the buffer is read back through a 4-register pipeline computing
   ``e = int_exp2_neg(t − max)`` (Horner polynomial on the fraction, right shift by the
   integer part); ``e`` overwrites ``t`` in the buffer and ``total = Σe`` accumulates;
3. *reciprocal* (uniform mode only) — ``R = floor(PROB_MAX·2**PROB_RECIP_SHIFT / total)``
   by a restoring divider, two quotient bits per cycle (:data:`SM_RECIP_CYCLES`);
4. *code pass* — log2: ``k = #{i in 0..14 : 2·total >= (3·e) << i}``; uniform:
   ``p = min(round_shift(e·R, PROB_RECIP_SHIFT), PROB_MAX)``; streamed out through a
   2-register pipeline that stalls as a whole on output back-pressure.

Rows are pipelined over five row buffers in four stages that run at the same time, each
on its own row and buffer: the *load* stage (pass 1), the *exp* stage (pass 2), the
*divider* stage (3; in log2 mode it passes the row on) and the *code* stage (4). A row
moves on, with its buffer (and maximum, sum or reciprocal), when its stage is done with it
and the next stage is free. The exp stage takes the next row right after its last read of
this one: the exp pipeline carries each beat's buffer and a last-beat flag, and the row it
leaves goes to the divider when its last exponential is written, or into a one-row hold
until the divider is free (the exp stage starts a row early only when the hold is empty and
no older row is in its pipeline). The code stage carries each beat's row sum and reciprocal
with the beat, so it too takes the next row right after its last read. So a row costs one
pass (``max(B, R + 1)`` cycles in steady state) instead of three in both modes.

Both modes emit :data:`SM_OUT_BITS`-bit signed lanes (log2 codes zero-extended). A row
whose length is not a multiple of ``lanes`` ends with a partial beat: the padding lanes
(any value) are left out of the maximum and the sum and come out as probability zero
(:data:`~vit2hw.intops.LOG2_ZERO_CODE` in log2 mode, 0 in uniform mode). Timing is
data independent (:func:`softmax_cycles`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from vit2hw.intops import (EXP2_C1, EXP2_C2, EXP_FRAC, LOG2_ZERO_CODE, PROB_MAX,
                           PROB_RECIP_SHIFT, SCORE_FRAC)
from hdl.vecops import ceil_log2, restoring_div_steps, round_shift_expr

__all__ = [
    "SM_MODE_LOG2",
    "SM_MODE_UNIFORM",
    "SM_OUT_BITS",
    "SM_EXP_PIPELINE_DEPTH",
    "SM_CODE_PIPELINE_DEPTH",
    "SM_RECIP_BITS",
    "SM_RECIP_CYCLES",
    "SM_START_CYCLES",
    "softmax_cycles",
    "SoftmaxUnit",
]

#: ``cfg.mode``: 4-bit log2 codes (:func:`vit2hw.intops.log_int_softmax`)
SM_MODE_LOG2 = 0
#: ``cfg.mode``: uniform 8-bit probabilities (:func:`vit2hw.intops.uniform_softmax`)
SM_MODE_UNIFORM = 1
#: width of an output lane (signed; log2 codes 0..15 and probabilities 0..PROB_MAX both fit)
SM_OUT_BITS = 8

#: registers of the exp pass (read → u → Horner step 1 → step 2 → shifted exponential)
SM_EXP_PIPELINE_DEPTH = 4
#: registers of the code pass (read → e → code)
SM_CODE_PIPELINE_DEPTH = 2
#: quotient bits of the uniform-mode reciprocal R = floor(PROB_MAX·2**PROB_RECIP_SHIFT / total):
#: total >= 2**EXP_FRAC (the row maximum alone contributes that), so R <= PROB_MAX << 17 < 2**24
SM_RECIP_BITS = (PROB_MAX << (PROB_RECIP_SHIFT - EXP_FRAC)).bit_length()
#: quotient bits the divider settles per cycle (two chained restoring steps)
SM_RECIP_STEPS = 2
#: cycles of the reciprocal
SM_RECIP_CYCLES = -(-SM_RECIP_BITS // SM_RECIP_STEPS)
#: cycles from the ``start`` strobe to the first cycle ``i.ready`` can be high
SM_START_CYCLES = 1
#: row buffers: one for each row between the load stage and the code stage's last read — the
#: row loading, the exp stage's row, the row that left it (draining or held for the divider),
#: the divider's and the code stage's
_SM_BUFFERS = 5

# The divider starts from the partial remainder D >> SM_RECIP_BITS of the dividend
# D = PROB_MAX << PROB_RECIP_SHIFT and brings down zeros: valid while D's low
# SM_RECIP_BITS bits are zero and that first remainder is below the smallest total.
assert PROB_RECIP_SHIFT >= SM_RECIP_BITS and SM_RECIP_BITS % SM_RECIP_STEPS == 0
assert (PROB_MAX << (PROB_RECIP_SHIFT - SM_RECIP_BITS)) < 1 << EXP_FRAC
assert PROB_MAX < 1 << (SM_OUT_BITS - 1) and LOG2_ZERO_CODE < 1 << (SM_OUT_BITS - 1)


def softmax_cycles(n: int, rows: int = 1, lanes: int = 1, mode: int = SM_MODE_LOG2) -> int:
    """Cycles from the first accepted input beat to the last output beat (both counted).

    Assumes the input is always valid and the output always ready. With
    ``B = ceil(n / lanes)`` beats per row and ``R`` = :data:`SM_RECIP_CYCLES` in uniform mode
    (else 0), the first row reaches the divider stage after
    ``F = 2B + SM_EXP_PIPELINE_DEPTH`` cycles (``B`` in, ``B`` exp reads, the exp pipeline's
    drain), leaves it ``R + 1`` cycles later, and the code stage needs
    ``B + SM_CODE_PIPELINE_DEPTH`` more cycles to its last output: ``F + 1 + K`` with
    ``K = R + B + SM_CODE_PIPELINE_DEPTH``. After that a row leaves every ``max(B, R + 1)``
    cycles: the load, exp and code stages each take the next row right after their last
    beat of this one, and the divider takes a row every ``R + 1`` cycles. Only short log2 rows
    (``B <= SM_EXP_PIPELINE_DEPTH``) differ: the exp stage starts a row early only when the
    row before it has left its pipeline, so every second row also waits for that drain
    (two rows per ``2B + SM_EXP_PIPELINE_DEPTH`` cycles).
    """
    if mode not in (SM_MODE_LOG2, SM_MODE_UNIFORM):
        raise ValueError(f"unknown softmax mode {mode}")
    if n < 1:
        raise ValueError("row length must be positive")
    if rows < 1:
        return 0
    beats = -(-int(n) // int(lanes))
    recip = SM_RECIP_CYCLES if mode == SM_MODE_UNIFORM else 0
    first = 2 * beats + SM_EXP_PIPELINE_DEPTH + 1 + recip + beats + SM_CODE_PIPELINE_DEPTH
    more = rows - 1
    if mode == SM_MODE_UNIFORM or beats > SM_EXP_PIPELINE_DEPTH:
        return first + more * max(beats, recip + 1)
    return first + (more // 2) * (2 * beats + SM_EXP_PIPELINE_DEPTH) + (more % 2) * beats


class SoftmaxUnit(wiring.Component):
    """Integer softmax over rows of up to ``max_len`` scores, ``lanes`` scores per cycle.

    Parameters
    ----------
    lanes : int
        Scores per beat (a power of two).
    max_len : int
        Longest row (row buffer depth ``max_len / lanes``; a multiple of ``lanes``).
    score_bits : int
        Width of the signed input scores.
    frac : int
        Fractional bits of the scores (:data:`~vit2hw.intops.SCORE_FRAC`).
    rows_width : int
        Width of ``cfg.rows``.

    Attributes
    ----------
    cfg : In(...)
        ``length`` (N, 1..max_len), ``rows``, ``mode`` (1 bit: :data:`SM_MODE_LOG2` = 0,
        :data:`SM_MODE_UNIFORM` = 1; left undriven it stays 0). Sampled on ``start``.
    start : In(1)
        Begins an operation of ``rows`` rows; ignored while ``busy``.
    busy : Out(1)
        High from the cycle after ``start`` until the last output beat is accepted.
    i : In(stream.Signature(ArrayLayout(signed(score_bits), lanes)))
        ``ceil(N/lanes)`` beats per row, rows back to back.
    o : Out(stream.Signature(ArrayLayout(signed(SM_OUT_BITS), lanes)))
        Same beat layout as the input. Log2 mode: codes ``k`` zero-extended (probability
        ``2**-k``; 15 means zero). Uniform mode: ``p`` in ``0..PROB_MAX`` (probability
        ``p/PROB_MAX``).
    """

    def __init__(self, lanes: int = 1, max_len: int = 256, score_bits: int = 16,
                 frac: int = SCORE_FRAC, rows_width: int = 16):
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError("lanes must be a power of two")
        if max_len % lanes or max_len < 1:
            raise ValueError("max_len must be a positive multiple of lanes")
        self.lanes = lanes
        self.max_len = max_len
        self.score_bits = score_bits
        self.frac = frac
        self.rows_width = rows_width
        super().__init__({
            "cfg": In(wiring.Signature({
                "length": Out(range(max_len + 1)),
                "rows": Out(rows_width),
                "mode": Out(1),
            })),
            "start": In(1),
            "busy": Out(1),
            "i": In(stream.Signature(data.ArrayLayout(signed(score_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(SM_OUT_BITS), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        lane_bits = (L - 1).bit_length()
        groups = self.max_len // L
        sb = self.score_bits
        fr = self.frac
        ew = EXP_FRAC + 1                                       # e in [0, 2**EXP_FRAC]
        bw = max(sb, ew)                                        # row buffer lane width
        uw = sb + 1                                             # u = max − t >= 0
        totw = ew + ceil_log2(self.max_len + 1)

        length = Signal.like(self.cfg.length)
        rows_left = Signal(self.rows_width)                     # rows the load stage has still to take
        uniform = Signal()                                      # cfg.mode == SM_MODE_UNIFORM
        beats = Signal(range(groups + 1))

        # three row buffers, one per stage: the load stage (max pass) fills one while the exp
        # stage rewrites another with exponentials and the code stage (reciprocal and code
        # pass) reads the third; a row's buffer travels with it, so each has one reader and
        # one writer at a time
        l_buf, x_buf, d_buf, b_buf = (Signal(range(_SM_BUFFERS), name=n)
                                      for n in ("l_buf", "x_buf", "d_buf", "b_buf"))
        g_in = Signal(range(groups + 1))                        # load: next beat to load
        g_rd = Signal(range(groups + 1))                        # exp: next exp read
        g_cd = Signal(range(groups + 1))                        # code: next code read
        x_reading = Signal()                                    # the exp stage holds a row (x_buf is current)
        wps, rds = [], []
        for n in range(_SM_BUFFERS):
            buf = memory.Memory(shape=data.ArrayLayout(unsigned(bw), L), depth=groups, init=[])
            m.submodules[f"rowbuf{n}"] = buf
            wp = buf.write_port()
            rp = buf.read_port(domain="comb")
            m.d.comb += rp.addr.eq(Mux(x_reading & (x_buf == n), g_rd, g_cd))
            wps.append(wp)
            rds.append(rp.data)

        def pick(sel):
            out = rds[0].as_value()
            for n in range(1, _SM_BUFFERS):
                out = Mux(sel == n, rds[n].as_value(), out)
            return out

        lane_view = data.ArrayLayout(unsigned(bw), L)
        exp_rd = data.View(lane_view, pick(x_buf))
        code_rd = data.View(lane_view, pick(b_buf))

        def lane_mask(group: Signal) -> list:
            base = Cat(Const(0, lane_bits), group) if lane_bits else group
            return [(base + lane) < length for lane in range(L)]

        # ---- load stage, max pass
        row_max = Signal(signed(sb))
        x_max = Signal(signed(sb))                              # the exp stage's row maximum
        in_fire = Signal()
        m.d.comb += in_fire.eq(self.i.valid & self.i.ready)
        # running maximum through one named signal per lane: an expression chain would
        # reference each step twice and grow exponentially with the lane count
        beat_max = row_max
        for lane, ok in enumerate(lane_mask(g_in)):
            t = self.i.payload[lane]
            step_max = Signal(signed(sb), name=f"max_upto{lane}")
            m.d.comb += step_max.eq(Mux(ok & (t > beat_max), t, beat_max))
            beat_max = step_max

        # ---- exp stage: 4 registers, no back-pressure (it writes the buffer)
        x_issue = Signal()
        xv = [Signal(name=f"xv{k}") for k in range(SM_EXP_PIPELINE_DEPTH)]
        xaddr = [Signal(range(groups), name=f"xaddr{k}") for k in range(SM_EXP_PIPELINE_DEPTH)]
        xmask = [Signal(L, name=f"xmask{k}") for k in range(SM_EXP_PIPELINE_DEPTH)]
        # each beat carries its row's buffer and whether it is the row's last, so the exp stage
        # can start the next row while this one's last beats are still in the pipeline
        xbuf = [Signal(range(_SM_BUFFERS), name=f"xbuf{k}") for k in range(SM_EXP_PIPELINE_DEPTH)]
        xlast = [Signal(name=f"xlast{k}") for k in range(SM_EXP_PIPELINE_DEPTH)]
        m.d.sync += [xv[0].eq(x_issue), xaddr[0].eq(g_rd), xmask[0].eq(Cat(*lane_mask(g_rd))),
                     xbuf[0].eq(x_buf), xlast[0].eq(g_rd + 1 == beats)]
        for k in range(1, SM_EXP_PIPELINE_DEPTH):
            m.d.sync += [xv[k].eq(xv[k - 1]), xaddr[k].eq(xaddr[k - 1]), xmask[k].eq(xmask[k - 1]),
                         xbuf[k].eq(xbuf[k - 1]), xlast[k].eq(xlast[k - 1])]
        total = Signal(totw)
        e_out = []
        for lane in range(L):
            u0 = Signal(uw, name=f"u0_{lane}")
            t1 = Signal(signed(17), name=f"h1_{lane}")          # C1 + round_shift(C2·r)
            r1 = Signal(fr, name=f"r1_{lane}")
            q1 = Signal(uw - fr, name=f"q1_{lane}")
            p2 = Signal(EXP_FRAC + 1, name=f"p2_{lane}")        # 2**-(r/2**frac) at 2**-15
            q2 = Signal(uw - fr, name=f"q2_{lane}")
            e3 = Signal(ew, name=f"e3_{lane}")
            t_rd = exp_rd[lane][:sb].as_signed()
            m.d.sync += [
                u0.eq((x_max - t_rd)[:uw]),
                t1.eq(round_shift_expr(EXP2_C2 * u0[:fr], fr) + EXP2_C1),
                r1.eq(u0[:fr]), q1.eq(u0[fr:]),
                p2.eq(round_shift_expr(t1 * r1, fr) + (1 << EXP_FRAC)),
                q2.eq(q1),
                e3.eq(Mux(q2 > EXP_FRAC, 0, p2 >> q2[:ceil_log2(EXP_FRAC + 1)]) & xmask[2][lane].replicate(ew)),
            ]
            e_out.append(e3)
        last = SM_EXP_PIPELINE_DEPTH - 1
        e_sum = Signal(totw)
        m.d.comb += e_sum.eq(sum(e_out))

        # ---- code stage, code pass: stall-all pipeline
        advance = Signal()
        c_issue = Signal()
        cv = [Signal(name=f"cv{k}") for k in range(SM_CODE_PIPELINE_DEPTH)]
        cmask = Signal(L)
        code_empty = Signal()
        m.d.comb += [
            advance.eq(~cv[-1] | self.o.ready),
            self.o.valid.eq(cv[-1]),
            code_empty.eq(~Cat(*cv).any()),
        ]
        with m.If(advance):
            m.d.sync += [cv[0].eq(c_issue), cv[1].eq(cv[0])]
        # the row sum the code pass compares against (log2) and the divisor (uniform), handed
        # over with the row and carried along with each beat (ctot0, rcp0), so the code stage
        # takes the next row as soon as it has read this one's last beat
        code_total = Signal(totw)
        recip = Signal(SM_RECIP_BITS)
        ctot0 = Signal(totw)
        rcp0 = Signal(SM_RECIP_BITS)
        twice_total = Cat(Const(0, 1), ctot0)
        # the divider stage's row: its sum, and the reciprocal it computes while the code
        # stage still uses the previous row's
        d_total = Signal(totw)
        d_quot = Signal(SM_RECIP_BITS)
        drem = Signal(totw)                       # divider partial remainder, < total
        dstep = Signal(range(SM_RECIP_CYCLES))
        for lane in range(L):
            e0 = Signal(ew, name=f"ce0_{lane}")
            e3x = e0 * 3
            code = sum((twice_total >= (e3x << i)) for i in range(LOG2_ZERO_CODE))
            rounded = (e0 * rcp0 + (1 << (PROB_RECIP_SHIFT - 1))) >> PROB_RECIP_SHIFT
            prob = Signal(rounded.shape(), name=f"prob_{lane}")
            m.d.comb += prob.eq(rounded)
            prob_sat = Mux(prob > PROB_MAX, PROB_MAX, prob)
            with m.If(advance):
                m.d.sync += [
                    e0.eq(code_rd[lane][:ew]),
                    self.o.payload[lane].eq(Mux(uniform, Mux(cmask[lane], prob_sat, 0),
                                                Mux(cmask[lane], code, LOG2_ZERO_CODE))),
                ]
        with m.If(advance):
            m.d.sync += [cmask.eq(Cat(*lane_mask(g_cd))), ctot0.eq(code_total), rcp0.eq(recip)]

        # ---- write ports: scores from the load stage, exponentials from the exp stage (never
        # the same buffer: a row's buffer moves with the row)
        scores_in = Cat(*[Cat(self.i.payload[lane], Const(0, bw - sb)) for lane in range(L)])
        exps = Cat(*[Cat(e, Const(0, bw - ew)) for e in e_out])
        for n, wp in enumerate(wps):
            x_wr = xv[last] & (xbuf[last] == n)
            m.d.comb += [
                wp.en.eq(x_wr | (in_fire & (l_buf == n))),
                wp.addr.eq(Mux(x_wr, xaddr[last], g_in)),
                wp.data.eq(Mux(x_wr, exps, scores_in)),
            ]

        # ---- control: the stages run concurrently, each on its own row; a row moves on when its
        # stage is done with it and the next stage is free (or freeing up this cycle). The exp
        # stage takes the next row right after its last read when the row it leaves can go on
        # without waiting for it: no older row is still in its pipeline and the hold is empty
        # (the divider takes a finished row, or the one-row hold keeps it until it can).
        min_score = -(1 << (sb - 1))
        l_hand = Signal()                         # load → exp
        l_hand_max = Signal(signed(sb))
        x_free = Signal()                         # the exp stage can take a row this cycle
        x_wait = Signal()                         # the exp stage's row is done and waits (DRAIN)
        h_valid = Signal()                        # a finished row held for the divider
        h_buf = Signal(range(_SM_BUFFERS))
        h_total = Signal(totw)
        d_hand = Signal()                         # divider → code
        back_free = Signal()                      # the code stage can take a row this cycle

        def next_buf(b):
            return Mux(b == _SM_BUFFERS - 1, 0, b + 1)

        def load_cfg():
            return [length.eq(self.cfg.length), rows_left.eq(self.cfg.rows),
                    beats.eq((self.cfg.length + (L - 1)) >> lane_bits), g_in.eq(0),
                    row_max.eq(min_score), uniform.eq(self.cfg.mode == SM_MODE_UNIFORM)]

        def hand_to_exp(fsm_next):
            m.d.comb += l_hand.eq(1)
            m.d.sync += [l_buf.eq(next_buf(l_buf)), rows_left.eq(rows_left - 1), g_in.eq(0),
                         row_max.eq(min_score)]
            with m.If(rows_left == 1):
                fsm_next("IDLE")
            with m.Else():
                fsm_next("LOAD")

        with m.FSM(name="load") as load:
            def goto(state):
                m.next = state
            with m.State("IDLE"):
                with m.If(self.start & ~self.busy):
                    m.d.sync += load_cfg()
                    with m.If(self.cfg.rows != 0):
                        m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(in_fire):
                    m.d.sync += [g_in.eq(g_in + 1), row_max.eq(beat_max)]
                    with m.If(g_in + 1 == beats):
                        m.d.comb += l_hand_max.eq(beat_max)
                        with m.If(x_free):
                            hand_to_exp(goto)
                        with m.Else():
                            m.next = "FULL"
            with m.State("FULL"):
                m.d.comb += l_hand_max.eq(row_max)
                with m.If(x_free):
                    hand_to_exp(goto)

        # a finished row: its last exponential is written this cycle (done_now; the sum is
        # complete with it), or it finished earlier and waits in the exp stage (x_wait)
        done_now = Signal()
        m.d.comb += done_now.eq(xv[last] & xlast[last])
        exp_ready = done_now | x_wait
        exp_buf = Mux(done_now, xbuf[last], x_buf)
        exp_total = Mux(done_now, total + e_sum, total)
        d_free = Signal()
        take_hold, take_exp, to_hold, exp_handed = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [
            take_hold.eq(d_free & h_valid),
            take_exp.eq(d_free & ~h_valid & exp_ready),
            to_hold.eq(exp_ready & ~take_exp & (~h_valid | take_hold)),
            exp_handed.eq(take_exp | to_hold),
        ]
        with m.If(exp_handed):
            m.d.sync += total.eq(0)
        with m.Elif(xv[last]):
            m.d.sync += total.eq(total + e_sum)
        with m.If(exp_handed):
            m.d.sync += x_wait.eq(0)
        with m.Elif(done_now):
            m.d.sync += x_wait.eq(1)
        with m.If(to_hold):
            m.d.sync += [h_valid.eq(1), h_buf.eq(exp_buf), h_total.eq(exp_total)]
        with m.Elif(take_hold):
            m.d.sync += h_valid.eq(0)

        older = Cat(*[xv[k] & xlast[k] for k in range(SM_EXP_PIPELINE_DEPTH)]).any()
        last_read = g_rd + 1 == beats
        with m.FSM(name="exp") as exp:
            def take_row():
                m.d.sync += [x_buf.eq(l_buf), x_max.eq(l_hand_max), g_rd.eq(0)]
                m.next = "EXP"
            with m.State("IDLE"):
                m.d.comb += x_free.eq(1)
                with m.If(l_hand):
                    take_row()
            with m.State("EXP"):
                m.d.comb += x_free.eq(last_read & ~older & ~h_valid)
                m.d.sync += g_rd.eq(g_rd + 1)
                with m.If(last_read):
                    with m.If(l_hand):
                        take_row()
                    with m.Else():
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                # this row's own last exponential (older rows' come first), or this row waiting
                own = exp_handed & (x_wait | (done_now & (xbuf[last] == x_buf)))
                m.d.comb += x_free.eq(own)
                with m.If(own):
                    with m.If(l_hand):
                        take_row()
                    with m.Else():
                        m.next = "IDLE"

        with m.FSM(name="div") as div:
            def take_sum():
                m.d.sync += [
                    d_buf.eq(Mux(take_hold, h_buf, exp_buf)), d_total.eq(Mux(take_hold, h_total, exp_total)),
                    drem.eq(PROB_MAX << (PROB_RECIP_SHIFT - SM_RECIP_BITS)), dstep.eq(0),
                ]
                with m.If(uniform):
                    m.next = "RECIP"
                with m.Else():
                    m.next = "DONE"
            with m.State("IDLE"):
                m.d.comb += d_free.eq(1)
                with m.If(take_hold | take_exp):
                    take_sum()
            with m.State("RECIP"):
                # restoring division of PROB_MAX << PROB_RECIP_SHIFT by the row sum; the
                # dividend bits brought down are all zero
                m.d.sync += restoring_div_steps(drem, d_quot, d_total, SM_RECIP_STEPS)
                m.d.sync += dstep.eq(dstep + 1)
                with m.If(dstep == SM_RECIP_CYCLES - 1):
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(back_free):
                    m.d.comb += [d_hand.eq(1), d_free.eq(1)]
                    with m.If(take_hold | take_exp):
                        take_sum()
                    with m.Else():
                        m.next = "IDLE"

        with m.FSM(name="back") as back:
            def take_codes():
                m.d.sync += [b_buf.eq(d_buf), g_cd.eq(0), code_total.eq(d_total), recip.eq(d_quot)]
                m.next = "CODE"
            with m.State("IDLE"):
                m.d.comb += back_free.eq(1)
                with m.If(d_hand):
                    take_codes()
            with m.State("CODE"):
                with m.If(c_issue):
                    m.d.sync += g_cd.eq(g_cd + 1)
                    with m.If(g_cd + 1 == beats):
                        m.d.comb += back_free.eq(1)
                        with m.If(d_hand):
                            take_codes()
                        with m.Else():
                            m.next = "IDLE"

        m.d.comb += [
            x_reading.eq(exp.ongoing("EXP")),
            self.i.ready.eq(load.ongoing("LOAD")),
            x_issue.eq(exp.ongoing("EXP")),
            c_issue.eq(back.ongoing("CODE") & advance),
            self.busy.eq(~load.ongoing("IDLE") | ~exp.ongoing("IDLE") | h_valid | ~div.ongoing("IDLE")
                         | ~back.ongoing("IDLE") | ~code_empty),
        ]
        return m
