"""Per-column requantizer on the systolic array's drain.

For every column ``c`` of an output row it computes, bit-exactly as
``intops.requantize(acc, m, s, out_bits, out_signed, zp, bias)``::

    y[c] = sat(round_shift((acc[c] + bias[c]) * m[c], s[c]) + zp[c])

to a run-time width ``out_bits`` (1..32 signed, 1..31 unsigned), sign- or zero-extended
into a 32-bit output lane. With ``bypass`` set it emits ``acc[c] + bias[c]`` unrounded
(raw int32 accumulators for logits or other wide outputs; ``bias = 0`` gives ``acc``).

The unit is a pure function of its input stream: every row carries its own parameters
(per column ``bias``, ``m``, ``s``, ``zp``; per row ``out_bits``, ``out_signed``,
``bypass``), so a per-element bias matrix (e.g. a position embedding folded into the patch
embedding) costs nothing extra and a parameter change between back-to-back tiles needs no
handshake. The driver (the controller) looks parameters up by the array's output ``tag``
and ``row``. An opaque ``user`` field passes through with the row.

Ranges: ``acc + bias`` must fit 32 bits and ``m`` 16 bits signed (the integer contract;
the sum wraps at 32 bits otherwise), ``s`` is 0..63 (``intops`` accepts up to 62; any
``s >= 48`` gives 0 because ``|(acc+bias)*m| <= 2**46``), ``zp`` is 16-bit signed.

Fully pipelined, one row per cycle, no back-pressure, latency ``REQUANT_LATENCY`` = 4:
(1) ``acc + bias``, saturation bounds; (2) ``* m``; (3) ``+ half``, arithmetic ``>> s``;
(4) ``+ zp``, saturate.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .systolic import SystolicArray, drain_signature

__all__ = ["Requantizer", "RequantizedArray", "row_format_layout", "requant_input_layout", "requant_output_layout", "REQUANT_LATENCY",
           "M_BITS", "SHIFT_BITS", "ZP_BITS", "OUT_BITS_FIELD"]

REQUANT_LATENCY = 4
M_BITS = 16
SHIFT_BITS = 6
ZP_BITS = 16
#: width of the run-time ``out_bits`` field
OUT_BITS_FIELD = 6
#: shifts at or above this give 0: |(acc+bias)*m| <= 2**46 < 2**(s-1)
_ZERO_SHIFT = 48


def column_params_layout(acc_bits: int = 32) -> data.StructLayout:
    """Requantization constants of one output column."""
    return data.StructLayout({
        "bias": signed(acc_bits),
        "m": signed(M_BITS),
        "s": unsigned(SHIFT_BITS),
        "zp": signed(ZP_BITS),
    })


def requant_input_layout(cols: int, acc_bits: int = 32, user_bits: int = 1) -> data.StructLayout:
    """One input row: accumulators, per-column constants, per-row output format, user bits."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(acc_bits), cols),
        "col": data.ArrayLayout(column_params_layout(acc_bits), cols),
        "out_bits": unsigned(OUT_BITS_FIELD),
        "out_signed": 1,
        "bypass": 1,
        "user": user_bits,
    })


def requant_output_layout(cols: int, user_bits: int = 1) -> data.StructLayout:
    """One output row: 32-bit lanes (requantized values extended, or raw sums) and user bits."""
    return data.StructLayout({
        "y": data.ArrayLayout(signed(32), cols),
        "user": user_bits,
    })


class Requantizer(wiring.Component):
    """``cols``-wide pipelined requantizer (see the module docstring for the arithmetic).

    Parameters
    ----------
    cols : int
        Columns per row (the array's ``cols``).
    acc_bits : int
        Accumulator width (32; the bypass lanes are 32 bits wide, so at most 32).
    user_bits : int
        Width of the pass-through ``user`` field (e.g. the array's row index and tag).

    Members
    -------
    i : In(drain_signature(requant_input_layout(...)))
        One row per cycle ``i.valid`` is high; no back-pressure.
    o : Out(drain_signature(requant_output_layout(...)))
        The same rows ``REQUANT_LATENCY`` cycles later.
    """

    def __init__(self, cols: int, acc_bits: int = 32, user_bits: int = 1):
        if cols < 1:
            raise ValueError(f"cols must be positive, got {cols}")
        if not 2 <= acc_bits <= 32:
            raise ValueError(f"acc_bits must be 2..32 (output lanes are 32-bit), got {acc_bits}")
        if user_bits < 1:
            raise ValueError("user_bits must be at least 1")
        self.cols, self.acc_bits, self.user_bits = cols, acc_bits, user_bits
        super().__init__({
            "i": In(drain_signature(requant_input_layout(cols, acc_bits, user_bits))),
            "o": Out(drain_signature(requant_output_layout(cols, user_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        pi = self.i.payload
        prod_bits = self.acc_bits + M_BITS
        wide = prod_bits + 2  # room for + half and + zp before saturation

        # per-row control, delayed alongside the columns
        valid = [Signal(name=f"valid{k}") for k in range(REQUANT_LATENCY + 1)]
        user = [Signal(self.user_bits, name=f"user{k}") for k in range(REQUANT_LATENCY + 1)]
        bypass = [Signal(name=f"bypass{k}") for k in range(REQUANT_LATENCY + 1)]
        m.d.comb += [valid[0].eq(self.i.valid), user[0].eq(pi.user), bypass[0].eq(pi.bypass)]
        for k in range(REQUANT_LATENCY):
            m.d.sync += [valid[k + 1].eq(valid[k]), user[k + 1].eq(user[k]),
                         bypass[k + 1].eq(bypass[k])]

        # saturation bounds of the run-time output format, shared by all columns
        hi1, lo1 = Signal(signed(34), name="sat_hi1"), Signal(signed(34), name="sat_lo1")
        bits = pi.out_bits
        top = (Const(1, unsigned(34)) << bits)  # 2**out_bits
        half_top = top >> 1
        m.d.sync += [
            hi1.eq(Mux(pi.out_signed, half_top - 1, top - 1)),
            lo1.eq(Mux(pi.out_signed, -half_top.as_signed(), 0)),
        ]
        hi, lo = hi1, lo1
        for k in range(2, REQUANT_LATENCY):
            nh, nl = Signal(signed(34), name=f"sat_hi{k}"), Signal(signed(34), name=f"sat_lo{k}")
            m.d.sync += [nh.eq(hi), nl.eq(lo)]
            hi, lo = nh, nl

        for c in range(self.cols):
            col = pi.col[c]
            # stage 1: acc + bias (wraps at acc_bits, as the contract forbids overflow)
            total = Signal(signed(self.acc_bits), name=f"sum{c}")
            mult1 = Signal(signed(M_BITS), name=f"m{c}")
            s1 = Signal(SHIFT_BITS, name=f"s1_{c}")
            zp1 = Signal(signed(ZP_BITS), name=f"zp1_{c}")
            m.d.sync += [total.eq(pi.acc[c] + col.bias), mult1.eq(col.m), s1.eq(col.s),
                         zp1.eq(col.zp)]
            # stage 2: multiply
            prod = Signal(signed(prod_bits), name=f"prod{c}")
            s2 = Signal(SHIFT_BITS, name=f"s2_{c}")
            zp2 = Signal(signed(ZP_BITS), name=f"zp2_{c}")
            raw2 = Signal(signed(self.acc_bits), name=f"raw2_{c}")
            m.d.sync += [prod.eq(total * mult1), s2.eq(s1), zp2.eq(zp1), raw2.eq(total)]
            # stage 3: round half up, arithmetic shift
            rounded = Signal(signed(prod_bits + 1), name=f"rnd{c}")
            zp3 = Signal(signed(ZP_BITS), name=f"zp3_{c}")
            raw3 = Signal(signed(self.acc_bits), name=f"raw3_{c}")
            big = s2 >= _ZERO_SHIFT
            shamt = Mux(big, 0, s2)
            half = ((Const(1, 1) << shamt) >> 1)[:_ZERO_SHIFT - 1]
            shifted = (prod + half) >> shamt
            m.d.sync += [rounded.eq(Mux(big, 0, shifted)), zp3.eq(zp2),
                         raw3.eq(raw2)]
            # stage 4: zero point, saturate (or the raw sum)
            y = Signal(signed(wide), name=f"y{c}")
            m.d.comb += y.eq(rounded + zp3)
            sat = Mux(y > hi, hi, Mux(y < lo, lo, y))
            m.d.sync += self.o.payload.y[c].eq(Mux(bypass[3], raw3, sat))

        m.d.comb += [self.o.valid.eq(valid[REQUANT_LATENCY]),
                     self.o.payload.user.eq(user[REQUANT_LATENCY])]
        return m


def row_format_layout(cols: int, acc_bits: int = 32) -> data.StructLayout:
    """Requantization parameters of one output row: per-column constants and the format."""
    return data.StructLayout({
        "col": data.ArrayLayout(column_params_layout(acc_bits), cols),
        "out_bits": unsigned(OUT_BITS_FIELD),
        "out_signed": 1,
        "bypass": 1,
    })


class RequantizedArray(wiring.Component):
    """A :class:`~hdl.systolic.SystolicArray` whose drain feeds a :class:`Requantizer`.

    The driver supplies each drained row's parameters in the same cycle the row leaves
    the array: ``drain_valid``/``drain_tag``/``drain_row`` say which row that is, and
    ``params`` (a combinational lookup, e.g. a small register file indexed by tag and row)
    must answer in that cycle. Rows reach ``o`` ``REQUANT_LATENCY`` cycles later with
    ``user = {row, tag}``.

    Members
    -------
    i : In(stream.Signature(input_layout(...)))
        The array's input stream (see :class:`~hdl.systolic.SystolicArray`).
    drain_valid, drain_row, drain_tag : Out
        The row leaving the array this cycle.
    params : In(row_format_layout(cols))
        That row's requantization parameters.
    o : Out(drain_signature(requant_output_layout(cols, row_bits + tag_bits)))
        Requantized rows; ``user`` holds ``row`` in its low ``row_bits`` bits, then ``tag``.
    busy : Out(1)
        The array is busy or a row is still in the requantizer.
    """

    def __init__(self, rows: int, cols: int, lane: int = 8, acc_bits: int = 32, tag_bits: int = 8,
                 int4_packing: bool = True):
        self.array = SystolicArray(rows, cols, lane, acc_bits, tag_bits, int4_packing)
        self.rows, self.cols, self.tag_bits = rows, cols, tag_bits
        self.row_bits = max(1, (rows - 1).bit_length())
        user_bits = self.row_bits + tag_bits
        self.requant = Requantizer(cols, acc_bits, user_bits)
        super().__init__({
            "i": In(self.array.i.signature.flip()),
            "drain_valid": Out(1),
            "drain_row": Out(self.row_bits),
            "drain_tag": Out(tag_bits),
            "params": In(row_format_layout(cols, acc_bits)),
            "o": Out(drain_signature(requant_output_layout(cols, user_bits))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self.array
        m.submodules.requant = rq = self.requant
        wiring.connect(m, wiring.flipped(self.i), array.i)
        ao = array.o.payload
        m.d.comb += [
            self.drain_valid.eq(array.o.valid),
            self.drain_row.eq(ao.row),
            self.drain_tag.eq(ao.tag),
            rq.i.valid.eq(array.o.valid),
            rq.i.payload.user.eq(Cat(ao.row, ao.tag)),
            rq.i.payload.out_bits.eq(self.params.out_bits),
            rq.i.payload.out_signed.eq(self.params.out_signed),
            rq.i.payload.bypass.eq(self.params.bypass),
        ]
        for c in range(self.cols):
            m.d.comb += [rq.i.payload.acc[c].eq(ao.acc[c]), rq.i.payload.col[c].eq(self.params.col[c])]
        wiring.connect(m, rq.o, wiring.flipped(self.o))
        # rows in the requantizer pipeline keep the unit busy
        in_pipe = Signal(REQUANT_LATENCY)
        m.d.sync += in_pipe.eq(Cat(array.o.valid, in_pipe[:-1]))
        m.d.comb += self.busy.eq(array.busy | (in_pipe != 0))
        return m
