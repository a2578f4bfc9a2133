"""PE, systolic array and requantizer: RTL bit-exact vs intops in cocotb, and the cycle model.

Every cocotb run compares all outputs with ``vit2hw.intops`` (see the testbench modules
``sim.tb_pe``, ``sim.tb_systolic``, ``sim.tb_requant``); the array runs also compare the
measured cycles of back-to-back tiles with ``hdl.systolic.tile_cycles``.
"""

from __future__ import annotations

import pytest

from hdl.emit import write_verilog
from hdl.pe import PE, Mode
from hdl.requant import REQUANT_LATENCY, Requantizer
from hdl.systolic import SystolicArray, first_row_latency, tile_beats, tile_cycles
from sim.runner import run_cocotb

SHAPES = [(2, 3), (4, 4), (3, 5), (1, 1)]


def test_pe_bit_exact_all_modes(tmp_path):
    """One PE's dot products (int8 signed/unsigned, packed int4 even/odd K, every shift code) equal intops."""
    src = write_verilog(PE(), "pe", tmp_path / "pe.v")
    assert run_cocotb([src], "pe", "sim.tb_pe", tmp_path / "sim", params={"seed": 5}).tests == 1


def test_dsp_mac_pe_bit_exact(tmp_path):
    """The PE without int4 packing (one DSP-slice MAC; shift as a one-hot multiplication) gives
    the same int8 and every-shift-code dot products as intops."""
    src = write_verilog(PE(int4_packing=False), "pe", tmp_path / "pe.v")
    assert run_cocotb([src], "pe", "sim.tb_pe", tmp_path / "sim",
                      params={"seed": 6, "int4_packing": False}).tests == 1


@pytest.mark.parametrize("rows, cols", [(3, 5), (4, 4)], ids=lambda v: str(v))
def test_dsp_mac_array_bit_exact_and_cycles(tmp_path, rows, cols):
    """An array of DSP-slice PEs: same results and the same tile_cycles() as the packing array."""
    src = write_verilog(SystolicArray(rows, cols, tag_bits=5, int4_packing=False), "systolic_array",
                        tmp_path / "sa.v")
    res = run_cocotb([src], "systolic_array", "sim.tb_systolic", tmp_path / "sim",
                     params={"rows": rows, "cols": cols, "tag_bits": 5, "seed": 3 + rows * cols,
                             "int4_packing": False})
    assert res.tests == 2


@pytest.mark.parametrize("rows, cols", SHAPES, ids=lambda v: str(v))
def test_array_bit_exact_and_cycles(tmp_path, rows, cols):
    """Back-to-back tiles in all modes equal intops; cycles of T tiles equal tile_cycles()."""
    src = write_verilog(SystolicArray(rows, cols, tag_bits=5), "systolic_array", tmp_path / "sa.v")
    res = run_cocotb([src], "systolic_array", "sim.tb_systolic", tmp_path / "sim",
                     params={"rows": rows, "cols": cols, "tag_bits": 5, "seed": 17 + rows * cols})
    assert res.tests == 2


@pytest.mark.parametrize("cols", [1, 3])
def test_requantizer_bit_exact(tmp_path, cols):
    """Requantized lanes equal intops.requantize (saturation, extreme product, shifts 0..62, bypass)."""
    src = write_verilog(Requantizer(cols, user_bits=4), "requantizer", tmp_path / "rq.v")
    res = run_cocotb([src], "requantizer", "sim.tb_requant", tmp_path / "sim",
                     params={"cols": cols, "user_bits": 4, "seed": 29 + cols})
    assert res.tests == 1


def test_tile_cycles_formula():
    """The documented closed form: beats + (T-1)*max(beats, R) + 2R + C + 1."""
    assert tile_cycles(16, 16, 16) == 16 + 32 + 16 + 1
    assert tile_cycles(16, 16, 64, 4) == 64 + 3 * 64 + 32 + 16 + 1
    # K < R: the next tile's last beat waits until R cycles after the previous one
    assert tile_cycles(16, 16, 4, 3) == 4 + 2 * 16 + 32 + 16 + 1
    # packed int4: K consumed two per beat, odd K padded
    assert tile_beats(7, Mode.PACKED) == 4 and tile_beats(7, "mul8") == 7
    assert tile_cycles(8, 8, 64, 5, Mode.PACKED) == tile_cycles(8, 8, 32, 5, Mode.MUL8)
    assert first_row_latency(4, 6) == 4 + 6 + 2
    assert REQUANT_LATENCY == 4


def test_steady_state_utilization_approaches_one():
    """For K >= R the MAC utilization of T tiles tends to 1 (overlapped drain)."""
    rows, cols, k, t = 16, 16, 192, 200
    util = (rows * cols * k * t) / (rows * cols * tile_cycles(rows, cols, k, t))
    assert util > 0.998


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters_rejected():
    with pytest.raises(ValueError, match="lane"):
        PE(lane=6)
    with pytest.raises(ValueError, match="acc_bits"):
        SystolicArray(4, 4, acc_bits=16)
    with pytest.raises(ValueError, match="shape"):
        SystolicArray(0, 4)
    with pytest.raises(ValueError, match="depth"):
        tile_cycles(4, 4, 0)
    with pytest.raises(ValueError, match="mode"):
        tile_beats(4, "square")
    with pytest.raises(ValueError, match="cols"):
        Requantizer(0)
