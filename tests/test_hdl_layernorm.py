"""LayerNormUnit: RTL bit-exact vs intops.ptf_layernorm, cycle model, lint.

The cocotb runs compare every output code with ``intops.ptf_layernorm`` on random,
realistic and edge rows, every row's internal reciprocal with
``intops.layernorm_reciprocal`` (white box, including ``r = 0`` and power-of-two ``r``),
and the measured cycles with ``layernorm_cycles``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hdl.emit import write_verilog
from hdl.layernorm import LN_OUT_PIPELINE_DEPTH, LayerNormUnit, layernorm_cycles, layernorm_sqrt_bits
from sim.runner import run_cocotb
from vit2hw import intops

PARAMS = [
    {"lanes": 1, "max_channels": 16},
    {"lanes": 4, "max_channels": 32},
]


def _build(tmp_path, p):
    unit = LayerNormUnit(lanes=p["lanes"], max_channels=p["max_channels"])
    return write_verilog(unit, "layernorm_unit", tmp_path / "layernorm_unit.v")


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"lanes{p['lanes']}")
def test_layernorm_unit_bit_exact_and_cycles(tmp_path, p):
    """Outputs equal ptf_layernorm and reciprocals layernorm_reciprocal on random/edge rows;
    measured cycles equal layernorm_cycles."""
    src = _build(tmp_path, p)
    result = run_cocotb([src], "layernorm_unit", "sim.tb_layernorm", tmp_path / "sim",
                        params={**p, "seed": 5 + p["lanes"]})
    assert result.tests == 4


def test_layernorm_unit_deit_widths(tmp_path):
    """DeiT-sized rows (max 768 channels, 4 lanes): bit-exact and cycle-exact."""
    p = {"lanes": 4, "max_channels": 768}
    src = _build(tmp_path, p)
    run_cocotb([src], "layernorm_unit", "sim.tb_layernorm", tmp_path / "sim", params={**p, "seed": 99})


def test_sqrt_bits_cover_the_largest_q():
    """The square root has enough bits for the largest Q = C·Σx² − S² of a full-scale row."""
    for cmax in (2, 16, 197, 768, 1024):
        x = (intops.int_range(8)[0] << 3) * ((-1) ** (cmax % 2))
        row = [x if i % 2 else -x + 8 for i in range(cmax)]   # near-maximal variance
        _, q = intops.layernorm_stats([row])
        assert int(q.max()) < 1 << (2 * layernorm_sqrt_bits(cmax, 8))


def test_layernorm_cycles_formula():
    """One row costs two passes plus the scalar phase (root and 17-bit reciprocal two bits per
    cycle, 4 cycles of hand-overs) and the pipeline's drain. Rows overlap in three stages on
    three row buffers: while row r's output pass goes out, row r+1's scalar phase runs and
    row r+2 is loaded, so each further row adds the longer of one pass (plus the stats
    drain) and the scalar phase, not their sum: 48 beats of 4 lanes are pass-bound, 12 of
    16 lanes (DeiT-Tiny's 192 channels on 16 lanes) scalar-bound."""
    scalar = -(-layernorm_sqrt_bits(1024) // 2) + 9 + 4
    one = layernorm_cycles(192, 1, 4, 1024)
    assert one == 48 + scalar + 48 + LN_OUT_PIPELINE_DEPTH
    assert layernorm_cycles(192, 197, 4, 1024) == one + 196 * (48 + 1)
    one16 = layernorm_cycles(192, 1, 16, 1024)
    assert layernorm_cycles(192, 40, 16, 1024) == one16 + 39 * (scalar - 1) and scalar - 1 > 12 + 1
    with pytest.raises(ValueError):
        layernorm_cycles(6, 1, 4)


@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")
def test_layernorm_unit_verilator_lint(tmp_path):
    """Generated Verilog passes verilator --lint-only (WIDTH/CASEINCOMPLETE are Amaranth idioms)."""
    src = _build(tmp_path, {"lanes": 2, "max_channels": 768})
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE", str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
