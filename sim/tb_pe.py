"""cocotb testbench of one processing element (``hdl.pe.PE``) against ``vit2hw.intops``.

A 1 x 1 tile is a dot product: tiles of every mode (int8 signed / unsigned A, packed
int4 with even and odd K, log2-shift with every code and junk in the unused nibble)
stream through back to back, with random bubbles, and every finished accumulator must
equal the integer primitives' result.
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from hdl.pe import PE_LATENCY, Mode, ctl_layout
from hdl.vecops import pack_struct
from sim.gemm_vectors import Tile, extreme_tile, random_tile
from sim.runner import tb_params


async def _reset(dut) -> None:
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.ctl_in.value = 0
    dut.a_in.value = 0
    dut.b_in.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


def _tiles(rng, int4_packing: bool = True):
    tiles = []
    for mode in (Mode if int4_packing else (Mode.MUL8, Mode.SHIFT)):
        for unsigned in ([False, True] if mode != Mode.SHIFT else [False]):
            for k in (1, 2, 3, 8, 33):
                tiles.append(random_tile(rng, 1, 1, k, mode, unsigned))
            for which in ("min", "mixed"):
                tiles.append(extreme_tile(1, 1, 64, mode, unsigned, which))
    # every shift code, each against the extreme B values
    codes = np.repeat(np.arange(16), 2)[None, :]
    tiles.append(Tile(Mode.SHIFT, codes, np.tile([-128, 127], 16)[:, None]))
    rng.shuffle(tiles)
    return tiles


@cocotb.test()
async def pe_matches_intops_in_every_mode(dut):
    """Back-to-back dot products in all modes equal intops (int_gemm / attn_v_shift)."""
    params = tb_params()
    rng = np.random.default_rng(params.get("seed", 1))
    tiles = _tiles(rng, bool(params.get("int4_packing", True)))
    await _reset(dut)
    layout = ctl_layout()
    schedule = []
    for tile in tiles:
        beats = tile.beats()
        for n, (a, b) in enumerate(beats):
            while rng.random() < 0.2:
                schedule.append(None)  # bubble: valid low
            ctl = {"valid": 1, "first": int(n == 0), "last": int(n == len(beats) - 1),
                   "mode": tile.mode.value, "a_unsigned": int(tile.a_unsigned)}
            schedule.append((pack_struct(layout, ctl), a[0], b[0]))
    got = []
    for cycle in range(len(schedule) + PE_LATENCY + 2):
        await FallingEdge(dut.clk)
        beat = schedule[cycle] if cycle < len(schedule) else None
        if beat is None:
            dut.ctl_in.value = int(rng.integers(0, 64)) & ~1  # junk control with valid low
            dut.a_in.value = int(rng.integers(0, 256))
            dut.b_in.value = int(rng.integers(0, 256))
        else:
            dut.ctl_in.value, dut.a_in.value, dut.b_in.value = beat
        await ReadOnly()
        if int(dut.done.value):
            got.append(dut.acc.value.to_signed())
    want = [int(t.expected()[0, 0]) for t in tiles]
    assert len(got) == len(want), f"{len(got)} results for {len(want)} tiles"
    for n, (g, w, t) in enumerate(zip(got, want, tiles)):
        assert g == w, f"tile {n} ({t.mode.name}, K={t.k}, unsigned={t.a_unsigned}): got {g}, want {w}"
