"""Write the RTL of one accelerator configuration: Verilog of the top and of every unit.

``write_rtl(config, out_dir)`` writes, byte-deterministically (no timestamps, no source
paths, fixed module names):

* ``accelerator.v`` — the whole accelerator (module ``vit2hw_accelerator``, self-contained);
* ``units/*.v`` — each unit on its own (array + requantizer, LayerNorm, softmax, vector
  unit, scratchpad shapes), for unit-level synthesis and resource reports;
* ``config.json`` — the ``AcceleratorConfig`` and the derived scratchpad geometry.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from vit2hw.isa import ISA_VERSION, RECORD_BYTES, Geometry

from .emit import write_verilog

__all__ = ["TOP_MODULE", "write_rtl", "check_resources"]

TOP_MODULE = "vit2hw_accelerator"
#: the array's measured cost per PE on xc7 (docs/hw/array.md): one DSP, ~170 LUTs
_LUTS_PER_PE = 170


def check_resources(config) -> None:
    """``ValueError`` if the array cannot fit the configuration's target device."""
    dev = config.target
    dsp = config.rows * config.cols + 2 * config.cols
    if dsp > dev.dsp:
        raise ValueError(f"a {config.rows}x{config.cols} array needs {dsp} DSP slices; "
                         f"{dev.name} has {dev.dsp}")
    luts = config.rows * config.cols * _LUTS_PER_PE
    if luts > dev.lut:
        raise ValueError(f"a {config.rows}x{config.cols} array needs about {luts} LUTs; "
                         f"{dev.name} has {dev.lut}")


def _units(config, g: Geometry):
    from .layernorm import LayerNormUnit
    from .requant import RequantizedArray
    from .scratchpad import Scratchpad
    from .softmax import SoftmaxUnit
    from .vector import VectorUnit
    L = g.lanes
    return [
        ("requantized_array", RequantizedArray(config.rows, config.cols, 8, config.acc_bits, config.tag_bits,
                                                config.int4_packing)),
        ("layernorm_unit", LayerNormUnit(lanes=L, max_channels=g.max_channels, in_bits=8, out_width=16)),
        ("softmax_unit", SoftmaxUnit(lanes=L, max_len=g.max_tokens, score_bits=16)),
        ("vector_unit", VectorUnit(lanes=L, max_channels=g.max_channels, in_width=16, out_width=16,
                                   lut_in_bits=8)),
        ("scratchpad_a", Scratchpad(g.bus_bytes * 8, g.a_depth, g.rows, 1)),
        ("scratchpad_b", Scratchpad(g.bus_bytes * 8, g.b_depth, g.cols, 1)),
        ("scratchpad_o", Scratchpad(g.cols * 32, g.o_depth, 1, 1)),
        ("scratchpad_v", Scratchpad(L * 32, g.v_depth, 1, 3)),
        ("scratchpad_p", Scratchpad(g.cols * RECORD_BYTES * 8, g.p_depth, 1, 1)),
    ]


def write_rtl(config, out_dir: Path | str, units: bool = True) -> list[Path]:
    """Write the Verilog of ``config`` into ``out_dir``; returns the files written (sorted)."""
    from .top import Accelerator
    out = Path(out_dir)
    g = Geometry.from_config(config)
    paths = [write_verilog(Accelerator(config), TOP_MODULE, out / "accelerator.v")]
    if units:
        for name, unit in _units(config, g):
            paths.append(write_verilog(unit, name, out / "units" / f"{name}.v"))
    doc = {"format": "vit2hw.rtl", "isa_version": ISA_VERSION, "top_module": TOP_MODULE,
           "config": config.to_dict(), "geometry": asdict(g)}
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    paths.append(cfg_path)
    return sorted(paths)
