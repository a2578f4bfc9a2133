"""Pieces shared by the vector-side units (LayerNorm, softmax, GELU/residual).

Hardware helpers build Amaranth expressions for the integer contract's rounding and
saturation with *run-time* shift amounts and output widths; the Python helpers pack and
unpack the words those units exchange (lanes of a stream payload, fields of a constant
written through a unit's write port), so a controller, a DMA descriptor builder and a
cocotb testbench all produce the same bits.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from amaranth.hdl import Cat, Const, Mux, Shape, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

__all__ = [
    "restoring_div_step",
    "restoring_div_steps",
    "const_write_signature",
    "round_shift_expr",
    "saturate_expr",
    "pack_lanes",
    "unpack_lanes",
    "pack_struct",
    "ceil_log2",
]


def ceil_log2(n: int) -> int:
    """Bits needed to index ``n`` items (at least 1)."""
    return max(1, (int(n) - 1).bit_length())


def const_write_signature(addr_width: int, data_shape) -> wiring.Signature:
    """Write port for a unit's per-channel constant memory, as seen by its driver.

    ``en`` writes ``data`` at ``addr`` on the next clock edge; one word per cycle, no
    back-pressure. Units take it as ``In(const_write_signature(...))``.
    """
    return wiring.Signature({
        "en": Out(1),
        "addr": Out(addr_width),
        "data": Out(data_shape),
    })


def restoring_div_step(rem: Value, quo: Value, divisor: Value) -> list:
    """One step of restoring division whose dividend bits brought down are all zero.

    Doubles the partial remainder, subtracts ``divisor`` when it fits and shifts the
    resulting quotient bit into ``quo``; returns the synchronous assignments.
    """
    return restoring_div_steps(rem, quo, divisor, 1)


def restoring_div_steps(rem: Value, quo: Value, divisor: Value, steps: int) -> list:
    """``steps`` chained :func:`restoring_div_step` s in one cycle (``steps`` quotient bits per
    cycle); intermediate remainders stay below ``divisor``, so they keep ``rem``'s width."""
    r, q = Value.cast(rem), Value.cast(quo)
    for _ in range(steps):
        twice = Cat(Const(0, 1), r)
        fits = twice >= divisor
        r = Mux(fits, twice - divisor, twice)[:len(rem)]
        q = Cat(fits, q)[:len(quo)]
    return [rem.eq(r), quo.eq(q)]


def round_shift_expr(x: Value, s: Value) -> Value:
    """``(x + (1 << (s - 1))) >> s`` (arithmetic), ``x`` when ``s == 0``: intops.round_shift."""
    s = Value.cast(s)
    half = (Const(1, 1) << s) >> 1
    return (x + half) >> s


def saturate_expr(x: Value, bits: Value, max_bits: int) -> Value:
    """Clamp signed ``x`` to a signed ``bits``-wide range (``1 <= bits <= max_bits``, run time).

    The result is ``signed(max_bits)``; values are sign-correct for every ``bits``.
    """
    # lim = 2**(bits-1) as a non-negative signed number, computed without a subtraction
    lim = ((Const(1, max_bits + 1) << Value.cast(bits)) >> 1)[:max_bits + 1]
    lim_s = Cat(lim, Const(0, 1)).as_signed()
    hi = lim_s - 1
    lo = -lim_s
    y = Mux(x > hi, hi, Mux(x < lo, lo, x))
    return y[:max_bits].as_signed()


def pack_lanes(values: Iterable[int], width: int) -> int:
    """Pack integers into one word, lane 0 in the least significant ``width`` bits."""
    word = 0
    mask = (1 << width) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * width)
    return word


def unpack_lanes(word: int, width: int, lanes: int, signed: bool = True) -> list[int]:
    """Inverse of :func:`pack_lanes`."""
    out = []
    mask = (1 << width) - 1
    for i in range(lanes):
        v = (int(word) >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out.append(v)
    return out


def pack_struct(layout: data.StructLayout, values: Mapping[str, int]) -> int:
    """Pack integer field values into the bits of a :class:`~amaranth.lib.data.StructLayout`.

    Every field must be given and fit its shape; signed fields are two's complement.
    """
    word = 0
    names = set()
    for name, field in layout:
        names.add(name)
        shape = Shape.cast(field.shape)
        v = int(values[name])
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
        if not lo <= v <= hi:
            raise ValueError(f"field {name}={v} does not fit {shape}")
        word |= (v & ((1 << shape.width) - 1)) << field.offset
    extra = set(values) - names
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}")
    return word

