"""The Yosys flow of ``hdl.synth`` gets through the vector unit, which used to abort it.

Amaranth's wire names collided with the names ABC9 gives back on reintegration (Yosys
issue #4349, "Assert count_id(wire->name) == 0"); ``synthesize`` runs ``splitnets`` first.
Without it this two-lane vector unit fails to synthesize.
"""

import pytest

from hdl.emit import write_verilog
from hdl.synth import SynthUnavailable, synthesize
from hdl.vector import VectorUnit


def test_vector_unit_synthesizes(tmp_path):
    """synth_xilinx completes on a small vector unit and maps its multiplies to DSPs."""
    src = write_verilog(VectorUnit(lanes=2, max_channels=8, in_width=16, out_width=16, lut_in_bits=8),
                        "vu", tmp_path / "vu.v")
    try:
        res = synthesize([src], "vu", family="xc7")
    except SynthUnavailable as e:
        pytest.skip(str(e))
    assert res.dsp > 0 and res.lut > 0 and res.ff > 0
