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


def check_resources(config) -> dict:
    """The analytic resource estimate of ``config`` (``vit2hw.report.estimate_resources``:
    the array of its PE kind, drain, vector lanes, scratchpads); ``ValueError`` naming every
    resource it exceeds on the configuration's target device."""
    from vit2hw.report import estimate_resources
    res = estimate_resources(config)
    if not res["fits"]:
        names = {"dsp": "DSP slices", "lut": "LUTs", "ff": "flip-flops", "bram": "BRAM36"}
        over = [f"{names[k]} {res['estimate'][k]} > {res['capacity'][k]}" for k in res["estimate"]
                if res["estimate"][k] > res["capacity"][k]]
        raise ValueError(f"{config.name} ({config.rows}x{config.cols}) does not fit {res['device']} "
                         f"(analytic estimate: {', '.join(over)})")
    return res


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
