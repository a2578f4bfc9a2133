"""Processing element of the output-stationary systolic array.

One PE owns one accumulator of the output tile. Every valid beat it receives an A
operand lane from the left and a B operand lane from above, forwards both (registered)
to its right and lower neighbours, and adds one term to its accumulator. What the term
is depends on the beat's mode:

``Mode.MUL8``
    ``a * b``: one signed (or, with ``a_unsigned``, unsigned) ``lane``-bit A times a
    signed ``lane``-bit B. The only wide multiplier of the PE (one DSP slice).
``Mode.PACKED``
    ``a0*b0 + a1*b1``: each lane holds two ``lane/2``-bit operands, element 0 in the low
    half. Two MACs per beat, so a narrow GEMM consumes K two at a time. ``a0*b0`` reuses
    the wide multiplier; ``a1*b1`` is a small shift-and-add product in logic.
``Mode.SHIFT``
    ``b << (shift_base - k)``, where the low 4 bits of A are a log2 code ``k`` and
    ``k == zero_code`` adds nothing: ``intops.shift_gemm`` / ``intops.attn_v_shift``.

Two implementations with the same ports, timing and results in ``MUL8`` and ``SHIFT``:

* ``int4_packing=True`` (the default): all three modes. The second int4 product and the
  shift are logic beside the DSP multiplier, so the term and the accumulator are fabric
  adders (~136 LUTs per PE in Yosys on xc7).
* ``int4_packing=False``: ``MUL8`` and ``SHIFT`` only, built to map onto one DSP slice
  whole. The shift is a multiplication by the one-hot ``2**(shift_base - k)``, so every
  term is one product; the product register and the accumulator are the slice's M and P
  registers (its post-adder accumulates, ``first`` selects zero instead of P). About 22
  LUTs per PE on xc7 (docs/hw/array.md §7). ``PACKED`` beats are not allowed (the
  assembler refuses them for such a configuration).

Timing: operands presented in cycle ``t`` are forwarded in ``t+1`` (``a_out``/``b_out``/
``ctl_out``), the term is registered in ``t+2`` and the accumulator holds it in ``t+3``.
A beat flagged ``first`` restarts the accumulator; after a beat flagged ``last`` the
accumulator holds the finished dot product for (at least) one cycle with ``done`` high,
which is when the array's output register captures it.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Mode", "ctl_layout", "PE", "PE_LATENCY", "SHIFT_BASE", "ZERO_CODE", "CODE_BITS",
           "term_bits", "check_pe_params"]

#: log2-shift mode adds ``b << (SHIFT_BASE - k)``: intops.ATTN_SHIFT
SHIFT_BASE = 14
#: log2 code meaning "probability zero": intops.LOG2_ZERO_CODE
ZERO_CODE = 15
#: width of a log2 code in the A lane
CODE_BITS = 4
#: cycles from operands at a PE's inputs to the accumulator holding their term
PE_LATENCY = 3


class Mode(enum.Enum, shape=2):
    """What a beat adds to the accumulators (chosen per beat, constant within a tile)."""
    MUL8 = 0
    PACKED = 1
    SHIFT = 2


def ctl_layout() -> data.StructLayout:
    """Per-beat control that travels with the A operands along a row."""
    return data.StructLayout({
        "valid": 1,
        "first": 1,
        "last": 1,
        "mode": Mode,
        "a_unsigned": 1,
    })


def term_bits(lane: int) -> int:
    """Width of the largest signed term one beat can add (the shift-mode term)."""
    return max(2 * lane + 1, lane + SHIFT_BASE + 1)


def _shift_add_mul(a: Value, b: Value) -> Value:
    """Signed ``a * b`` as explicit partial products (kept out of DSP slices by synthesis).

    ``b`` is signed: its sign bit carries weight ``-2**(n-1)``.
    """
    n = len(b)
    width = len(a) + n
    total = Const(0, signed(width))
    for i in range(n):
        pp = Mux(b[i], a, 0).as_signed() << i
        total = (total - pp) if i == n - 1 else (total + pp)
    return total[:width].as_signed()


def check_pe_params(lane: int, acc_bits: int) -> None:
    """Raise ValueError unless a PE can be built with this lane and accumulator width."""
    if lane < 8 or lane % 2:
        raise ValueError(f"PE lane width must be even and at least 8, got {lane}")
    if acc_bits < term_bits(lane):
        raise ValueError(f"acc_bits={acc_bits} narrower than one term ({term_bits(lane)} bits)")


class PE(wiring.Component):
    """Output-stationary MAC cell with multiply, packed-narrow and log2-shift modes.

    Parameters
    ----------
    lane : int
        Operand lane width in bits (even, at least 8; packed mode splits it in halves).
    acc_bits : int
        Accumulator width; sums wrap at this width (the integer contract forbids overflow).
    int4_packing : bool
        Build the ``PACKED`` mode (fabric term and accumulator) or not (the whole MAC in
        one DSP slice; see the module docstring).

    Members
    -------
    a_in, b_in : In(lane)
        Operands of this cycle's beat (A from the left, B from above).
    ctl_in : In(ctl_layout())
        The beat's control (``valid``, ``first``, ``last``, ``mode``, ``a_unsigned``).
    a_out, b_out, ctl_out : Out
        The same, registered, for the right / lower neighbour.
    acc : Out(signed(acc_bits))
        The accumulator.
    done : Out(1)
        High for one cycle when ``acc`` holds a finished tile (the cycle after the term of a
        ``last`` beat was added).
    """

    def __init__(self, lane: int = 8, acc_bits: int = 32, int4_packing: bool = True):
        check_pe_params(lane, acc_bits)
        self.lane = lane
        self.acc_bits = acc_bits
        self.int4_packing = bool(int4_packing)
        super().__init__({
            "a_in": In(lane),
            "b_in": In(lane),
            "ctl_in": In(ctl_layout()),
            "a_out": Out(lane),
            "b_out": Out(lane),
            "ctl_out": Out(ctl_layout()),
            "acc": Out(signed(acc_bits)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.lane
        h = w // 2

        # stage 1: operand registers, shared with the neighbours
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.ctl_out.eq(self.ctl_in),
        ]
        a, b, ctl = self.a_out, self.b_out, self.ctl_out
        if not self.int4_packing:
            self._dsp_mac(m, a, b, ctl)
            return m

        def widen(x: Value) -> Value:
            # one extra bit so an unsigned A and a signed A share one signed multiplier
            return Mux(ctl.a_unsigned, x.as_unsigned(), x.as_signed())

        packed = ctl.mode == Mode.PACKED
        a0, a1 = a[:h], a[h:]
        b0, b1 = b[:h].as_signed(), b[h:].as_signed()
        mul_a = Signal(signed(w + 1))
        mul_b = Signal(signed(w))
        m.d.comb += [
            mul_a.eq(Mux(packed, widen(a0), widen(a))),
            mul_b.eq(Mux(packed, b0, b.as_signed())),
        ]
        product = Signal(signed(2 * w + 1))
        m.d.comb += product.eq(mul_a * mul_b)
        narrow = Signal(signed(w + 2))
        # outside packed mode the narrow product is forced to zero, so the term is a 2-way choice
        m.d.comb += narrow.eq(_shift_add_mul(Mux(packed, widen(a1), 0), b1))

        code = a[:CODE_BITS]
        shift_src = Mux(code == ZERO_CODE, 0, b.as_signed())  # zero code adds nothing
        shifted = Signal(signed(w + SHIFT_BASE))
        m.d.comb += shifted.eq(shift_src << (SHIFT_BASE - code)[:CODE_BITS])

        # stage 2: the beat's term
        term = Signal(signed(term_bits(w)))
        ctl2 = Signal(ctl_layout())
        m.d.sync += [
            ctl2.eq(ctl),
            term.eq(Mux(ctl.mode == Mode.SHIFT, shifted, product + narrow)),
        ]

        # stage 3: accumulate
        m.d.sync += self.done.eq(ctl2.valid & ctl2.last)
        with m.If(ctl2.valid):
            m.d.sync += self.acc.eq(Mux(ctl2.first, 0, self.acc) + term)
        return m

    def _dsp_mac(self, m: Module, a: Value, b: Value, ctl) -> None:
        """Stages 2 and 3 as one multiplier, its product register and an accumulator that
        Yosys / Vivado fold into a single DSP slice."""
        w = self.lane
        code = a[:CODE_BITS]
        # 2**(SHIFT_BASE - k); the zero code gives 0, so the beat adds nothing
        # (an expression, not a case table: a comb process that Icarus never wakes would hold X)
        weight = Signal(signed(SHIFT_BASE + 2))
        m.d.comb += weight.eq(Mux(code == ZERO_CODE, 0, Const(1 << SHIFT_BASE, SHIFT_BASE + 1) >> code))
        widened = Mux(ctl.a_unsigned, a.as_unsigned(), a.as_signed())
        mul_a = Signal(signed(SHIFT_BASE + 2))
        m.d.comb += mul_a.eq(Mux(ctl.mode == Mode.SHIFT, weight, widened))

        # stage 2: the product (the slice's M register)
        product = Signal(signed(SHIFT_BASE + 2 + w))
        ctl2 = Signal(ctl_layout())
        m.d.sync += [product.eq(mul_a * b.as_signed()), ctl2.eq(ctl)]

        # stage 3: accumulate (the slice's P register and post-adder)
        m.d.sync += self.done.eq(ctl2.valid & ctl2.last)
        with m.If(ctl2.valid):
            m.d.sync += self.acc.eq(Mux(ctl2.first, 0, self.acc) + product)
