"""Generated Verilog of the array + requantizer lints clean and synthesizes for Xilinx.

* ``verilator --lint-only -Wno-fatal`` reports no errors (warnings, e.g. Verilog's implicit
  width extension in Amaranth's output, are allowed);
* (slow) Yosys ``synth_xilinx`` maps a 16 x 16 array + requantizer with one DSP48 per PE
  and two per requantizer column, and its counts parse into ``{dsp, lut, ff, bram}``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hdl.emit import write_verilog
from hdl.requant import RequantizedArray
from hdl.synth import SynthUnavailable, parse_stat, summarize_cells, synthesize


def _lint(path, top):
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "--top-module", top, str(path)],
                          capture_output=True, text=True)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("%Error")]
    return proc.returncode, errors


@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")
@pytest.mark.parametrize("rows, cols", [(3, 5), (8, 8)])
def test_array_requant_verilator_lint(tmp_path, rows, cols):
    """No %Error from verilator on the generated array + requantizer."""
    src = write_verilog(RequantizedArray(rows, cols), "gemm_core", tmp_path / "gemm_core.v")
    rc, errors = _lint(src, "gemm_core")
    assert rc == 0 and not errors, "\n".join(errors[:20])


def test_parse_stat_both_formats():
    """Cell counts are read from old (name count) and new (count name) stat layouts."""
    old = "=== top ===\n   Number of cells:   10\n     DSP48E1    4\n     LUT6   3\n     FDRE  2\n     RAMB18E1 1\n"
    new = "=== top ===\n     10 cells\n      4   DSP48E2\n      3   LUT6\n      1   SRLC32E\n      2   FDSE\n      2   RAMB36E2\n"
    assert summarize_cells(parse_stat(old)) == {"dsp": 4, "lut": 3, "ff": 2, "bram": 0.5}
    assert summarize_cells(parse_stat(new)) == {"dsp": 4, "lut": 4, "ff": 2, "bram": 2.0}


@pytest.mark.slow
def test_synth_16x16_xc7(tmp_path):
    """A 16 x 16 array + requantizer maps to 256 + 32 DSP48E1 and no block RAM."""
    src = write_verilog(RequantizedArray(16, 16), "gemm_core", tmp_path / "gemm_core.v")
    try:
        res = synthesize([src], "gemm_core", "xc7", log_path=tmp_path / "yosys.log")
    except SynthUnavailable as exc:
        pytest.skip(str(exc))
    print(f"16x16 array+requant: {res.counts()} in {res.wall_s:.0f} s")
    assert res.dsp == 16 * 16 + 2 * 16
    assert res.bram == 0
    assert 256 * 80 < res.ff < 256 * 200
    assert 0 < res.lut < 256 * 400
