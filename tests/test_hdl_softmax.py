"""SoftmaxUnit: RTL bit-exact vs intops.log_int_softmax / intops.uniform_softmax, cycle model, lint.

The cocotb runs compare every output, in both ``cfg.mode`` settings, with the intops
function of that mode on realistic, random and edge rows (including partial last
beats), the uniform mode's per-row reciprocal with its definition, and the measured
cycles with ``softmax_cycles``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hdl.emit import write_verilog
from hdl.softmax import (SM_CODE_PIPELINE_DEPTH, SM_EXP_PIPELINE_DEPTH, SM_MODE_LOG2,
                         SM_MODE_UNIFORM, SM_RECIP_BITS, SM_RECIP_CYCLES, SoftmaxUnit, softmax_cycles)
from vit2hw import intops
from sim.runner import run_cocotb

PARAMS = [
    {"lanes": 1, "max_len": 24},
    {"lanes": 4, "max_len": 32},
    {"lanes": 8, "max_len": 256},      # DeiT rows of 197 tokens
]


def _build(tmp_path, p):
    unit = SoftmaxUnit(lanes=p["lanes"], max_len=p["max_len"])
    return write_verilog(unit, "softmax_unit", tmp_path / "softmax_unit.v")


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"lanes{p['lanes']}")
def test_softmax_unit_bit_exact_and_cycles(tmp_path, p):
    """Both modes equal their intops function on random/edge rows; cycles equal softmax_cycles."""
    src = _build(tmp_path, p)
    result = run_cocotb([src], "softmax_unit", "sim.tb_softmax", tmp_path / "sim",
                        params={**p, "seed": 3 + p["lanes"]})
    assert result.tests == 5


def test_softmax_cycles_formula():
    """One row: three passes over ceil(N/lanes) beats, the exp drain, the hand-over through
    the divider stage (plus the divider in uniform mode) and the code drain. Rows overlap in
    four stages, and the load, exp and code stages each take the next row right after their
    last beat of this one, so a row of 50 beats costs 50 cycles in both modes: one pass, not
    three, and not the exp drain either. A short row (2 beats) is paced by the uniform mode's
    divider instead, and short log2 rows alternate with the exp drain (two rows per 2·2 + 4
    cycles). The default mode is log2."""
    front = 2 * 50 + SM_EXP_PIPELINE_DEPTH
    one_row = front + 1 + 50 + SM_CODE_PIPELINE_DEPTH
    assert softmax_cycles(197, 1, 4) == one_row == 3 * 50 + SM_EXP_PIPELINE_DEPTH + SM_CODE_PIPELINE_DEPTH + 1
    assert softmax_cycles(197, 1, 4, SM_MODE_LOG2) == one_row
    assert softmax_cycles(197, 197 * 3, 4) == one_row + (197 * 3 - 1) * 50
    assert softmax_cycles(197, 197 * 3, 4, SM_MODE_UNIFORM) == \
        one_row + SM_RECIP_CYCLES + (197 * 3 - 1) * 50
    assert SM_RECIP_CYCLES + 1 > 2 + SM_EXP_PIPELINE_DEPTH
    assert softmax_cycles(8, 5, 4, SM_MODE_UNIFORM) == \
        2 * 2 + SM_EXP_PIPELINE_DEPTH + 1 + SM_RECIP_CYCLES + 2 + SM_CODE_PIPELINE_DEPTH + 4 * (SM_RECIP_CYCLES + 1)
    two = 2 * 2 + SM_EXP_PIPELINE_DEPTH + 1 + 2 + SM_CODE_PIPELINE_DEPTH
    assert [softmax_cycles(8, r, 4) - two for r in (1, 2, 3, 4, 5)] == \
        [0, 2, 2 * 2 + SM_EXP_PIPELINE_DEPTH, 2 * 2 + SM_EXP_PIPELINE_DEPTH + 2, 2 * (2 * 2 + SM_EXP_PIPELINE_DEPTH)]
    with pytest.raises(ValueError):
        softmax_cycles(0)
    with pytest.raises(ValueError):
        softmax_cycles(4, 1, 1, mode=2)


def test_reciprocal_quotient_bits():
    """The divider's quotient register holds R for the smallest possible row sum (2**EXP_FRAC)."""
    largest = (intops.PROB_MAX << intops.PROB_RECIP_SHIFT) // (1 << intops.EXP_FRAC)
    assert largest < 1 << SM_RECIP_BITS <= 2 * largest


@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")
def test_softmax_unit_verilator_lint(tmp_path):
    """Generated Verilog passes verilator --lint-only (WIDTH/CASEINCOMPLETE are Amaranth idioms).

    Built with 16 lanes, the widest AcceleratorConfig default: the Verilog must stay
    linear in the lane count (a regression once made it exponential).
    """
    src = _build(tmp_path, {"lanes": 16, "max_len": 256})
    assert src.stat().st_size < 1_000_000
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE", str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
