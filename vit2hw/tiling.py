"""Blocking of one GEMM onto the array's scratchpads, chosen by a sequential cycle estimate.

A GEMM ``Y[M, N] = A[M, K] @ B[K, N]`` is cut into row blocks of ``tm`` row tiles (``R``
rows each) and column blocks of ``tn`` column tiles (``C`` columns each). A block is one
GEMM instruction; its A rows, Bᵀ rows, parameter lines and output lines must all fit
their scratchpads (:class:`vit2hw.isa.Geometry`). Among the blockings that fit, the one
with the fewest estimated cycles wins, in one of two loop orders:

``rows``  outer loop over row blocks (the A block stays resident while every column
          block streams past; weights are reloaded per row block unless they all fit);
``cols``  outer loop over column blocks (weight-stationary: the weight block stays while
          every row block streams past; activations are reloaded unless they all fit).

The estimate uses the same formulas as :mod:`vit2hw.cyclemodel` (DMA words, array
tiles, instruction fetch) so the choice minimizes the program's real sequential cycles;
ties go to larger blocks, then the ``rows`` order, so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from vit2hw.cyclemodel import REQUANT_LATENCY, fetch_cycles, tile_cycles
from vit2hw.isa import Geometry, Target

__all__ = ["TileError", "Blocking", "choose_blocking", "resident_param_lines"]


class TileError(ValueError):
    """The scratchpads cannot hold even the smallest tile of a GEMM."""


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Blocking:
    tm: int          # row tiles per block
    tn: int          # column tiles per block
    order: str       # "rows" or "cols"
    estimate: int    # estimated sequential cycles


def _splits(total: int) -> list[int]:
    """Distinct block sizes ``ceil(total / t)`` (largest first)."""
    return sorted({_ceil(total, t) for t in range(1, total + 1)}, reverse=True)


def resident_param_lines(g: Geometry, m: int, n: int, params: str) -> int:
    """P lines of the whole GEMM when they fit ``g``'s P scratchpad at once (then they are
    loaded once and every block reads its part), else 0. Only per-column and per-row
    parameters qualify: per-element ones are laid out per block (``n_tiles`` of the block)."""
    total = {"col": _ceil(n, g.cols), "row": _ceil(m, g.rows) * g.rows,
             "rowrec": _ceil(_ceil(m, g.rows) * g.rows, g.cols)}.get(params, 0)
    return total if 0 < total <= g.p_depth else 0


def choose_blocking(g: Geometry, m: int, n: int, k_beats: int, params: str, what: str,
                    mem_latency: int = 1, overlap: bool = False) -> Blocking:
    """Best blocking of an ``m × n`` GEMM of ``k_beats`` beats.

    The cost of a candidate is its loads plus its GEMMs one after another, or with
    ``overlap`` (double buffering) the first block's loads and then, per block, the slower of
    its GEMM and the next block's loads. Which model gives the faster program depends on
    how much the rest of the program overlaps, so the scheduler tries both.

    ``params`` is ``"col"`` (one P line per column tile), ``"elem"`` (one P line per output
    row and column tile), ``"elem4"`` (one per four output rows and column tile: GEMM
    ``bias_quads``), ``"elem2"`` (one per pair of output rows and column tile: GEMM
    ``bias_pairs``), ``"row"`` (one P line per output row; one GEMM per column tile) or
    ``"rowrec"`` (one record per output row, ``C`` to a P line, so a row block must start on a
    line: ``tm·R`` a multiple of ``C`` unless one block holds every row).
    Raises :class:`TileError` ("buffers too small for a tile: ...") when nothing fits.
    """
    R, C = g.rows, g.cols
    lines = _ceil(k_beats, g.bus_bytes)
    mt, nt = _ceil(m, R), _ceil(n, C)
    fetch = fetch_cycles(g, mem_latency) + 1
    wp = g.words_per_line(Target.P)

    def load(words: int) -> int:
        return fetch + words + mem_latency

    whole_p = resident_param_lines(g, m, n, params)

    best: tuple | None = None
    for tm in _splits(mt):
        a_lines = tm * lines
        if a_lines > g.a_depth:
            continue
        for tn in _splits(nt):
            if tn * lines > g.b_depth or tm * R * tn > g.o_depth:
                continue
            if params == "rowrec" and tm < mt and (tm * R) % C:
                continue
            p_lines = whole_p or {"col": tn, "elem": tm * R * tn, "elem2": _ceil(tm * R, 2) * tn,
                                  "elem4": _ceil(tm * R, 4) * tn, "row": tm * R,
                                  "rowrec": _ceil(tm * R, C)}[params]
            if p_lines > g.p_depth:
                continue
            n_rb, n_cb = _ceil(mt, tm), _ceil(nt, tn)
            a_cost = load(min(tm * R, m) * lines)
            b_cost = load(min(tn * C, n) * lines)
            p_cost = load(p_lines * wp)
            if params in ("row", "rowrec"):
                gemm = tn * (fetch + tile_cycles(R, C, k_beats, tm) + REQUANT_LATENCY) + tn * fetch
            else:
                gemm = fetch + tile_cycles(R, C, k_beats, tm * tn) + REQUANT_LATENCY + fetch
            blocks = n_rb * n_cb
            for order in ("rows", "cols"):
                if order == "rows":
                    a_loads = n_rb
                    b_loads = 1 if n_cb == 1 else blocks
                else:
                    b_loads = n_cb
                    a_loads = 1 if n_rb == 1 else blocks
                p_loads = 1 if whole_p else {"elem": blocks, "elem2": blocks, "elem4": blocks, "col": b_loads, "row": a_loads,
                                             "rowrec": a_loads}[params]
                loads = a_loads * a_cost + b_loads * b_cost + p_loads * p_cost
                if overlap and blocks > 1:
                    first = a_cost + b_cost + (p_cost if p_loads else 0)
                    est = first + blocks * max(gemm, (loads - first) // (blocks - 1))
                else:
                    est = loads + blocks * gemm
                key = (est, -tm * tn, order != "rows")
                if best is None or key < best[0]:
                    best = (key, Blocking(tm, tn, order, est))
    if best is None:
        raise TileError(
            f"buffers too small for a tile: {what} needs A {lines} lines/bank (has {g.a_depth}), "
            f"B {lines} lines/bank (has {g.b_depth}), O {R} lines (has {g.o_depth}), "
            f"P {R if params != 'col' else 1} lines (has {g.p_depth}) for one {R}x{C} tile of K={k_beats}")
    return best[1]
