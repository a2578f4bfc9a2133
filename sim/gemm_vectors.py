"""GEMM tiles for the PE / systolic-array testbenches: operands, lane packing, expected results.

A :class:`Tile` holds the logical operands of one output tile ``C = A @ B`` in one array
mode; :meth:`Tile.beats` packs them into the 8-bit lanes the array consumes and
:meth:`Tile.expected` asks ``vit2hw.intops`` for the exact result, so the testbenches
never re-implement arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdl.pe import CODE_BITS, Mode, ZERO_CODE
from vit2hw import intops

__all__ = ["Tile", "random_tile", "extreme_tile"]

LANE = 8
HALF = LANE // 2


@dataclass(frozen=True)
class Tile:
    """Operands of one tile: ``a`` [R, K] (log2 codes in shift mode), ``b`` [K, C]."""
    mode: Mode
    a: np.ndarray
    b: np.ndarray
    a_unsigned: bool = False
    tag: int = 0
    #: random bits placed in the unused upper nibble of shift-mode A lanes
    junk: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.a.shape[1])

    def beats(self) -> list[tuple[list[int], list[int]]]:
        """Per beat: the A lanes (one per tile row) and the B lanes (one per column)."""
        a, b = self.a.astype(np.int64), self.b.astype(np.int64)
        if self.mode == Mode.PACKED:
            if self.k % 2:  # odd K: the missing operand is a zero, which adds nothing
                a = np.concatenate([a, np.zeros((a.shape[0], 1), np.int64)], axis=1)
                b = np.concatenate([b, np.zeros((1, b.shape[1]), np.int64)], axis=0)
            mask = (1 << HALF) - 1
            a_l = (a[:, 0::2] & mask) | ((a[:, 1::2] & mask) << HALF)
            b_l = (b[0::2, :] & mask) | ((b[1::2, :] & mask) << HALF)
            return [(a_l[:, t].tolist(), b_l[t, :].tolist()) for t in range(a_l.shape[1])]
        mask = (1 << LANE) - 1
        a_l = a & mask
        if self.mode == Mode.SHIFT and self.junk is not None:
            a_l = a_l | (self.junk.astype(np.int64) << CODE_BITS)
        return [(a_l[:, t].tolist(), (b[t, :] & mask).tolist()) for t in range(self.k)]

    def expected(self) -> np.ndarray:
        """The exact [R, C] accumulators, from the integer primitives."""
        if self.mode == Mode.SHIFT:
            return intops.attn_v_shift(self.a, self.b, LANE)
        bits = HALF if self.mode == Mode.PACKED else LANE
        return intops.int_gemm(self.a, self.b, bits, bits, x_signed=not self.a_unsigned)


def _operand_ranges(mode: Mode, a_unsigned: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    if mode == Mode.SHIFT:
        return (0, ZERO_CODE), intops.int_range(LANE)
    bits = HALF if mode == Mode.PACKED else LANE
    a_rng = intops.int_range(bits, signed=not a_unsigned)
    return a_rng, intops.int_range(bits)


def random_tile(rng: np.random.Generator, rows: int, cols: int, k: int, mode: Mode,
                a_unsigned: bool = False, tag: int = 0) -> Tile:
    """Uniform random operands over the full range of the mode (every shift code included)."""
    (alo, ahi), (blo, bhi) = _operand_ranges(mode, a_unsigned and mode != Mode.SHIFT)
    a = rng.integers(alo, ahi + 1, size=(rows, k))
    b = rng.integers(blo, bhi + 1, size=(k, cols))
    junk = rng.integers(0, 1 << (LANE - CODE_BITS), size=(rows, k)) if mode == Mode.SHIFT else None
    return Tile(mode, a, b, a_unsigned and mode != Mode.SHIFT, tag, junk)


def extreme_tile(rows: int, cols: int, k: int, mode: Mode, a_unsigned: bool = False,
                 which: str = "min", tag: int = 0) -> Tile:
    """Operands at the range ends: ``min`` (most negative A and B: largest positive sum),
    ``mixed`` (most positive A times most negative B: most negative sum)."""
    (alo, ahi), (blo, bhi) = _operand_ranges(mode, a_unsigned and mode != Mode.SHIFT)
    if mode == Mode.SHIFT:  # code 0 = the largest shift
        a_val, b_val = 0, (blo if which == "min" else bhi)
    elif which == "min":
        a_val, b_val = (ahi if a_unsigned else alo), (blo if not a_unsigned else bhi)
    else:
        a_val, b_val = ahi, blo
    a = np.full((rows, k), a_val, np.int64)
    b = np.full((k, cols), b_val, np.int64)
    return Tile(mode, a, b, a_unsigned and mode != Mode.SHIFT, tag)
