"""cocotb testbench of ``hdl.systolic.SystolicArray`` against ``vit2hw.intops`` and ``tile_cycles``.

Parameters (``tb_params``): ``rows``, ``cols``, ``tag_bits``, ``seed``, ``int4_packing``
(false: no ``PACKED`` tiles).

* ``array_tiles_bit_exact``: a random mix of tiles in every mode (random and extreme
  operands, K from 1 to beyond R, odd K in packed mode), offered back to back with random
  bubbles; every output row must equal intops, rows 0..R-1 in order with their tag and
  first/last flags, and ``busy`` must drop after the last row.
* ``array_cycles_match_model``: T tiles offered every cycle take exactly
  ``tile_cycles(R, C, K, T, mode)`` cycles, for K above and below R and packed mode.
"""

from __future__ import annotations

import cocotb
import numpy as np
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from hdl.pe import Mode
from hdl.systolic import first_row_latency, input_layout, output_layout, tile_cycles
from hdl.vecops import pack_lanes, pack_struct, unpack_lanes
from sim.gemm_vectors import Tile, extreme_tile, random_tile
from sim.runner import tb_params


async def _reset(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


def _beat_words(tile: Tile, rows: int, cols: int, tag_bits: int) -> list[int]:
    layout = input_layout(rows, cols, 8, tag_bits)
    beats = tile.beats()
    words = []
    for n, (a, b) in enumerate(beats):
        words.append(pack_struct(layout, {
            "a": pack_lanes(a, 8), "b": pack_lanes(b, 8),
            "first": int(n == 0), "last": int(n == len(beats) - 1),
            "mode": tile.mode.value, "a_unsigned": int(tile.a_unsigned), "tag": tile.tag,
        }))
    return words


def _unpack_row(word: int, rows: int, cols: int, tag_bits: int) -> dict:
    layout = output_layout(rows, cols, 32, tag_bits)
    fields = {name: (field.offset, Shape.cast(field.shape).width) for name, field in layout}
    acc_off, acc_w = fields["acc"]
    out = {"acc": unpack_lanes(word >> acc_off, 32, cols)}
    for name in ("row", "first", "last", "tag"):
        off, w = fields[name]
        out[name] = (word >> off) & ((1 << w) - 1)
    return out


async def _run(dut, tiles, rows, cols, tag_bits, rng=None, bubble=0.0):
    """Offer the tiles' beats (bubbles with probability ``bubble``); return rows and cycles."""
    words = [w for t in tiles for w in _beat_words(t, rows, cols, tag_bits)]
    n_rows = rows * len(tiles)
    got, accept_cycles, out_cycles = [], [], []
    idx, cycle, offering = 0, 0, False
    limit = 2 * len(words) + (rows + 1) * (len(tiles) + 2) + 2 * (rows + cols) + 50
    while len(got) < n_rows:
        await FallingEdge(dut.clk)
        if not offering and idx < len(words):
            offering = rng is None or rng.random() >= bubble
        dut.i__valid.value = int(offering)
        if offering:
            dut.i__payload.value = words[idx]
        elif rng is not None:  # junk while valid is low must be ignored
            width = len(dut.i__payload)
            dut.i__payload.value = int.from_bytes(rng.bytes((width + 7) // 8), "little") & ((1 << width) - 1)
        await ReadOnly()
        if offering and int(dut.i__ready.value):
            accept_cycles.append(cycle)
            idx += 1
            offering = False
        if int(dut.o__valid.value):
            got.append(_unpack_row(dut.o__payload.value.to_unsigned(), rows, cols, tag_bits))
            out_cycles.append(cycle)
        cycle += 1
        assert cycle < limit, f"array did not drain in {limit} cycles ({len(got)}/{n_rows} rows)"
    await FallingEdge(dut.clk)
    dut.i__valid.value = 0
    await ReadOnly()
    assert idx == len(words), f"only {idx} of {len(words)} beats accepted"
    assert not int(dut.o__valid.value), "extra output row"
    assert not int(dut.busy.value), "busy still high after the last row"
    return got, accept_cycles, out_cycles


def _check(tiles, got, rows):
    for n, tile in enumerate(tiles):
        want = tile.expected()
        for r in range(rows):
            row = got[n * rows + r]
            where = f"tile {n} ({tile.mode.name}, K={tile.k}, unsigned={tile.a_unsigned}) row {r}"
            assert row["row"] == r, f"{where}: row index {row['row']}"
            assert row["first"] == int(r == 0) and row["last"] == int(r == rows - 1), f"{where}: flags"
            assert row["tag"] == tile.tag, f"{where}: tag {row['tag']} != {tile.tag}"
            assert row["acc"] == want[r].tolist(), f"{where}: got {row['acc']}, want {want[r].tolist()}"


@cocotb.test()
async def array_tiles_bit_exact(dut):
    """Random and extreme tiles in every mode, back to back with bubbles, equal intops."""
    p = tb_params()
    rows, cols, tag_bits = p["rows"], p["cols"], p.get("tag_bits", 8)
    rng = np.random.default_rng(p.get("seed", 1))
    tiles = []
    for mode in (Mode if p.get("int4_packing", True) else (Mode.MUL8, Mode.SHIFT)):
        for k in sorted({1, 2, max(1, rows - 1), rows, rows + 3, 3 * rows + 1}):
            unsigned = mode != Mode.SHIFT and bool(rng.integers(0, 2))
            tiles.append(random_tile(rng, rows, cols, k, mode, unsigned))
        for which in ("min", "mixed"):
            tiles.append(extreme_tile(rows, cols, 2 * rows + 1, mode, which == "min" and mode != Mode.SHIFT, which))
            tiles.append(extreme_tile(rows, cols, 2 * rows + 1, mode, False, which))
    rng.shuffle(tiles)
    tiles = [Tile(t.mode, t.a, t.b, t.a_unsigned, int(rng.integers(0, 1 << tag_bits)), t.junk) for t in tiles]
    await _reset(dut)
    got, _, _ = await _run(dut, tiles, rows, cols, tag_bits, rng, bubble=0.15)
    _check(tiles, got, rows)


@cocotb.test()
async def array_cycles_match_model(dut):
    """Measured cycles of T back-to-back tiles equal tile_cycles(); data stays exact."""
    p = tb_params()
    rows, cols, tag_bits = p["rows"], p["cols"], p.get("tag_bits", 8)
    rng = np.random.default_rng(p.get("seed", 1) + 1)
    await _reset(dut)
    cases = [(Mode.MUL8, rows + 2, 3), (Mode.MUL8, max(1, rows // 2), 3), (Mode.MUL8, 1, 2),
             (Mode.PACKED, 2 * rows + 3, 3), (Mode.SHIFT, rows, 2)]
    if not p.get("int4_packing", True):
        cases = [c for c in cases if c[0] != Mode.PACKED]
    for mode, k, n_tiles in cases:
        tiles = [random_tile(rng, rows, cols, k, mode, tag=n % (1 << tag_bits)) for n in range(n_tiles)]
        got, acc_cyc, out_cyc = await _run(dut, tiles, rows, cols, tag_bits)
        _check(tiles, got, rows)
        measured = out_cyc[-1] - acc_cyc[0] + 1
        model = tile_cycles(rows, cols, k, n_tiles, mode)
        assert measured == model, f"{mode.name} K={k} T={n_tiles}: measured {measured}, model {model}"
        first_out = out_cyc[0] - acc_cyc[len(tiles[0].beats()) - 1]
        assert first_out == first_row_latency(rows, cols), f"first-row latency {first_out}"
        for _ in range(3):
            await FallingEdge(dut.clk)
