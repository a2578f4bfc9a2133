"""Performance and resource reports of a scheduled program (analysis only, no side effects).

``analyze(sp, config)`` replays the program on the cycle model (:func:`vit2hw.cyclemodel.timeline`),
attributes to every graph node the cycles by which its instructions pushed the program's end
(the shares add up to the total) and each unit's busy cycles (DMA load, DMA store, array,
vector units; "load" counts both DMA engines' LOADs), counts the external-memory traffic, and compares with the MAC-bound ideal. ``build_report`` adds
clock, latency, FPS and the analytic resource estimate into the fixed JSON schema of
``docs/report-format.md``; ``render_markdown`` writes it for people.

Two kinds of cycle numbers, never mixed:

* **as built** – the accelerator as generated: DMA (activations), weight DMA, GEMM and
  vector engines run concurrently, instructions issue in order with their dependency waits,
  GEMM blocks are double buffered. This is the cycle model's exact prediction (``vit2hw.cyclemodel``),
  which the RTL matches.
* **estimates** – what further changes would give: per node ``max(weight/constant DMA,
  compute)`` (``overlapped_forwarding``: every activation forwarded on chip, into the
  array's operands too, instead of the round trips through external memory that remain), and the
  busiest unit's total (``pipelined``: additionally the array and the vector units working
  on different rows/heads/layers at once). Lower bounds from the same counts, not
  measurements.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from vit2hw.cyclemodel import DEFAULT_MEM_LATENCY, timeline
from vit2hw.isa import INSTR_BYTES, RECORD_BYTES, Geometry, Op

__all__ = ["REPORT_VERSION", "UNITS", "LayerStats", "Analysis", "analyze", "by_op", "estimate_resources",
           "scratchpad_bram_bytes",
           "build_report", "render_markdown"]

REPORT_VERSION = 1
UNITS = ("load", "store", "array", "vector", "control")
_UNIT = {Op.LOAD: "load", Op.STORE: "store", Op.GEMM: "array", Op.LAYERNORM: "vector", Op.SOFTMAX: "vector",
         Op.LUT: "vector", Op.RESIDUAL_ADD: "vector", Op.MOVE: "vector", Op.END: "control",
         Op.FENCE: "control"}


@dataclass
class LayerStats:
    """Cycles and traffic of one graph node."""
    node: str
    op: str
    module: str
    instructions: int = 0
    cycles: int = 0              # cycles by which its instructions pushed the program's end
    by_unit: dict[str, int] = field(default_factory=lambda: {u: 0 for u in UNITS})   # busy cycles
    read_bytes: int = 0          # DMA reads (LOAD), bus words × bus bytes
    write_bytes: int = 0         # DMA writes (STORE)
    fetch_bytes: int = 0         # instruction words read
    const_read_bytes: int = 0    # part of read_bytes from weights / parameters / unit constants
    const_load_cycles: int = 0   # LOAD cycles of those
    macs: int = 0
    ideal: int = 0
    packed: bool = False
    mode: str = ""

    @property
    def dma(self) -> int:
        return self.by_unit["load"] + self.by_unit["store"]

    @property
    def compute(self) -> int:
        return self.by_unit["array"] + self.by_unit["vector"] + self.by_unit["control"]

    @property
    def overlapped_forwarding(self) -> int:
        return max(self.const_load_cycles, self.compute)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "module": self.module, "instructions": self.instructions,
                "cycles": self.cycles, "by_unit": dict(self.by_unit), "dram_read_bytes": self.read_bytes,
                "dram_write_bytes": self.write_bytes, "fetch_bytes": self.fetch_bytes,
                "const_read_bytes": self.const_read_bytes, "macs": self.macs, "ideal_cycles": self.ideal,
                "packed": self.packed, "mode": self.mode,
                "overlapped_forwarding_estimate": self.overlapped_forwarding}


@dataclass
class Analysis:
    instr_cycles: list[int]
    layers: dict[str, LayerStats]
    total_cycles: int
    ideal_cycles: int
    macs: int

    @property
    def utilization(self) -> float:
        return self.ideal_cycles / self.total_cycles if self.total_cycles else 0.0

    def total(self, what: str) -> int:
        return sum(getattr(l, what) for l in self.layers.values())


def _bus_bytes(ins, g: Geometry) -> int:
    words = ins["rows"] * ins["row_lines"] * g.words_per_line(ins["target"], 1 << ins["ebytes_log2"])
    return words * g.bus_bytes


def analyze(sp, config, mem_latency: int = DEFAULT_MEM_LATENCY) -> Analysis:
    """Per-instruction cycles (cycle model), per-node sums, traffic, ideal cycles."""
    g = config if isinstance(config, Geometry) else Geometry.from_config(config)
    starts = sorted((a, a + max(s, 1), k) for k, _, a, s in sp.layout)
    keys = [s[0] for s in starts]

    def kind_at(addr: int) -> str:
        i = bisect.bisect_right(keys, addr) - 1
        return starts[i][2] if i >= 0 and addr < starts[i][1] else ""

    layers: dict[str, LayerStats] = {}
    for name in dict.fromkeys(sp.per_instr_layer):
        layers[name] = LayerStats(name, sp.node_ops.get(name, ""), sp.node_modules.get(name, ""))
    tl = timeline(sp.program, g, mem_latency)
    if len(tl.instructions) != len(sp.program.instructions):
        raise ValueError("a scheduled program ends with its only END")
    cycles = tl.makespan_shares()
    for ins, name, c, b in zip(sp.program.instructions, sp.per_instr_layer, cycles, tl.busy):
        st = layers[name]
        st.instructions += 1
        st.cycles += c
        st.by_unit[_UNIT[ins.op]] += b
        st.fetch_bytes += INSTR_BYTES
        if ins.op == Op.LOAD:
            n = _bus_bytes(ins, g)
            st.read_bytes += n
            if kind_at(ins["ext_addr"]) in ("weights", "params", "constants"):
                st.const_read_bytes += n
                st.const_load_cycles += b
        elif ins.op == Op.STORE and not ins.get("dst_a"):
            st.write_bytes += _bus_bytes(ins, g)
    pes = g.rows * g.cols
    for name, info in sp.gemms.items():
        st = layers.setdefault(name, LayerStats(name, info.op, sp.node_modules.get(name, "")))
        st.macs, st.packed, st.mode = info.macs, info.packed, info.mode
        st.ideal = -(-info.macs // (pes * (2 if info.packed else 1)))
    total = tl.total
    return Analysis(cycles, layers, total, sum(l.ideal for l in layers.values()),
                    sum(l.macs for l in layers.values()))


# ------------------------------------------------------------------ resources

#: measured, docs/hw/array.md §7: RequantizedArray(16, 16) on xc7 — 288 DSP, 49 081 LUT, 36 940 FF
_ARRAY_REF = {"pes": 256, "cols": 16, "dsp": 288, "lut": 49081, "ff": 36940}
#: measured, docs/hw/array.md §7: RequantizedArray(16, 16, int4_packing=False) on xc7 (each
#: PE's multiply and accumulate in its DSP slice) — 288 DSP, 19 670 LUT, 22 860 FF
_MAC_ARRAY_REF = {"pes": 256, "cols": 16, "dsp": 288, "lut": 19670, "ff": 22860}
#: measured, docs/hw/array.md §7: the whole Accelerator(default) (16×16, 16 lanes) on xc7, with
#: the drain tables, per-row parameters, MOVE, the weight DMA engine, the two-buffer softmax
#: and the softmax's O input
_TOP_REF = {"lanes": 16, "cols": 16, "dsp": 454, "lut": 101861, "ff": 56809, "bram": 168.5}
#: measured: what the drain's table copies and per-row record select added to that top
#: (97 515 → 99 826 LUT, 55 925 → 55 936 FF), per array column
_PER_COL = {"dsp": 0.0, "lut": (99826 - 97515) / 16, "ff": (55936 - 55925) / 16}
#: measured since that top, per array column: the GEMM engine's ``bias_pairs`` line and bias
#: select (GemmEngine of the default configuration alone, Yosys xc7: 51 407 → 51 985 LUT,
#: 36 785 → 36 793 FF)
_PER_COL_SINCE_TOP = {"dsp": 0.0, "lut": (51985 - 51407) / 16, "ff": (36793 - 36785) / 16}
#: measured since then, per array column: the drain's four-row bias select and the quad
#: record's M, S and zero point (GemmEngine of the default configuration alone, Yosys xc7:
#: 51 805 → 54 553 LUT, 36 973 → 36 975 FF), and the B and P write ports' select between the
#: two DMA engines (LOAD ``on_dma``; the two multiplexers alone, Yosys xc7: 2 168 LUT with
#: 16 columns on a 64-bit bus, 6 328 with 48 on a 128-bit bus: 130 per column and 88 once)
_PER_COL_QUADS = {"dsp": 0.0, "lut": (54553 - 51805) / 16, "ff": (36975 - 36973) / 16}
_PER_COL_WRITE_SELECT = {"dsp": 0.0, "lut": (6328 - 2168) / 32, "ff": 0.0}
_FIXED_WRITE_SELECT = {"dsp": 0, "lut": 2168 - 16 * (6328 - 2168) // 32, "ff": 0}
#: measured since then, once per accelerator: the GEMM engine's second drain context (two
#: context registers, the row pipeline's table flag and end mark, the in-flight count), the
#: same GemmEngine alone: 51 985 → 51 675 LUT (the drain now decodes its fields from a
#: 96-bit context register instead of the 256-bit instruction word), 36 793 → 36 969 FF
_FIXED_SINCE_TOP = {"dsp": 0, "lut": 51675 - 51985, "ff": 36969 - 36793}
#: measured (Yosys synth_xilinx xc7, 16 lanes) since that top: the softmax with four
#: overlapping stages and five row buffers (max_len 256; 8 255 LUT, 1 478 FF against 6 444
#: and 1 327 with two row buffers) and the three-stage LayerNorm (1 024 channels; 12 185 LUT,
#: 5 138 FF against 11 913 and 5 063); the row buffers are LUT RAM, no DSP or block RAM
_SINCE_TOP = {"dsp": 0.0, "lut": (8255 - 6444) + (12185 - 11913), "ff": (1478 - 1327) + (5138 - 5063)}
#: everything else beside the array (vector units, controller, DMA, scratchpad ports), per
#: lane: the rest of the measured top, all of it attributed to the lanes (conservative for
#: configurations with more lanes than 16, the controller/DMA part does not grow with them)
_PER_LANE = {k: (_TOP_REF[k] - _ARRAY_REF[k] - _PER_COL[k] * _TOP_REF["cols"] + _SINCE_TOP[k]) / _TOP_REF["lanes"]
             for k in ("dsp", "lut", "ff")}
_BRAM36_BYTES = 4608
#: copies of each scratchpad in block RAM: one per read port (a block RAM serves one write and
#: one read port; hdl/top.py: O is read by STORE and MOVE, V by both vector operands and STORE);
#: measured on a 64 KB V: 45.0 BRAM36, on a 64 KB O with two read ports 29.0
_SPAD_COPIES = {"A": 1, "B": 1, "O": 2, "V": 3, "P": 1}


def scratchpad_bram_bytes(config) -> dict[str, int]:
    """Block-RAM bytes of each scratchpad of ``config``, read-port copies included."""
    g = Geometry.from_config(config)
    size = {"A": config.act_buf_bytes, "B": config.weight_buf_bytes, "O": config.out_buf_bytes,
            "V": g.v_depth * g.lanes * 4, "P": g.p_depth * g.cols * RECORD_BYTES}
    return {k: v * _SPAD_COPIES[k] for k, v in size.items()}


def _spad_bram36(config) -> float:
    return sum(scratchpad_bram_bytes(config).values()) / _BRAM36_BYTES


#: scratchpad bytes (copies included) of the measured default top: A, B 128 KiB, O 2 × 64 KiB,
#: V 3 × 64 KiB, P 64 KiB (tests/test_report.py checks it against scratchpad_bram_bytes)
_TOP_SPAD_BYTES = 655360
#: block RAM beside the scratchpads (row buffers of the LayerNorm / softmax units, ...), per
#: lane: the measured top minus its scratchpads
_BRAM_PER_LANE = (_TOP_REF["bram"] - _TOP_SPAD_BYTES / _BRAM36_BYTES) / _TOP_REF["lanes"]


def _per_col(kind: str) -> float:
    """Everything beside the array measured per array column."""
    return sum(d[kind] for d in (_PER_COL, _PER_COL_SINCE_TOP, _PER_COL_QUADS, _PER_COL_WRITE_SELECT))


def estimate_resources(config) -> dict[str, Any]:
    """Analytic FPGA resources of ``config``: array + requantizer scaled from the measured
    16×16 synthesis, the drain per column and the rest per vector lane from the measured
    whole accelerator, scratchpads as block RAM with one copy per read port."""
    pes, cols, lanes = config.rows * config.cols, config.cols, config.vector_lanes
    packing = getattr(config, "int4_packing", True)
    array_ref = _ARRAY_REF if packing else _MAC_ARRAY_REF
    lut_pe = array_ref["lut"] / array_ref["pes"]
    ff_pe = array_ref["ff"] / array_ref["pes"]
    est = {
        "dsp": round(pes + 2 * cols + _PER_LANE["dsp"] * lanes),
        "lut": round(lut_pe * pes + _per_col("lut") * cols + _PER_LANE["lut"] * lanes
                     + _FIXED_SINCE_TOP["lut"] + _FIXED_WRITE_SELECT["lut"]),
        "ff": round(ff_pe * pes + _per_col("ff") * cols + _PER_LANE["ff"] * lanes
                    + _FIXED_SINCE_TOP["ff"] + _FIXED_WRITE_SELECT["ff"]),
        "bram": round(_spad_bram36(config) + _BRAM_PER_LANE * lanes, 1),
    }
    dev = config.target
    cap = {"dsp": dev.dsp, "lut": dev.lut, "ff": dev.ff, "bram": dev.bram36}
    return {
        "method": "analytic",
        "basis": "array+requantizer scaled per PE from the measured 16x16 Yosys synth_xilinx run "
                 + ("(docs/hw/array.md: 288 DSP, 49081 LUT, 36940 FF)" if packing else
                    "of the DSP-slice MAC PEs, int4_packing off (docs/hw/array.md: 288 DSP, 19670 LUT, 22860 FF)")
                 + "; the drain tables per column and "
                 "everything else per vector lane from the measured whole default accelerator (454 DSP, "
                 "101861 LUT, 56809 FF, 168.5 BRAM36 with 16 columns and 16 lanes) plus the measured growth "
                 "of its softmax and LayerNorm units (2083 LUT, 226 FF), of the GEMM drain's paired- and "
                 "four-row bias selects (36 and 172 LUT per column) and of the B/P write-port select "
                 "between the two DMA engines (130 LUT per column, 88 once) since; scratchpads as BRAM36, "
                 "one copy per read port (A, B, P 1; O 2; V 3)",
        "device": dev.name, "estimate": est, "capacity": cap,
        "fraction": {k: round(est[k] / cap[k], 4) for k in est},
        "fits": all(est[k] <= cap[k] for k in est),
    }


# ------------------------------------------------------------------ the report

def by_op(layers) -> list[dict[str, Any]]:
    """Per graph operation type (linear, softmax, ...): nodes, the cycles they add to the total
    (their makespan shares, which sum to it), busy cycles per unit and ideal cycles; largest
    share first. Where the time goes, at a glance."""
    out: dict[str, dict[str, Any]] = {}
    for l in layers:
        e = out.setdefault(l.op, {"op": l.op, "nodes": 0, "cycles": 0, "ideal": 0,
                                  "by_unit": {u: 0 for u in UNITS}})
        e["nodes"] += 1
        e["cycles"] += l.cycles
        e["ideal"] += l.ideal
        for u in UNITS:
            e["by_unit"][u] += l.by_unit[u]
    return sorted(out.values(), key=lambda e: (-e["cycles"], e["op"]))


def build_report(sp, config, analysis: Analysis, graph_meta: dict, bits: dict | None = None,
                 synth: dict | None = None, mem_latency: int = DEFAULT_MEM_LATENCY) -> dict[str, Any]:
    """The ``report.json`` document (schema: docs/report-format.md)."""
    a = analysis
    mhz = float(config.clock_mhz)
    latency_ms = a.total_cycles / (mhz * 1e3)
    fwd = a.total("overlapped_forwarding")
    layers_ = list(a.layers.values())
    pipe = max(a.total("const_load_cycles"), sum(l.by_unit["array"] for l in layers_),
               sum(l.by_unit["vector"] for l in layers_))
    res = estimate_resources(config)
    if synth is not None:
        res["yosys"] = synth
    layers = list(a.layers.values())
    return {
        "format": "vit2hw.report", "version": REPORT_VERSION,
        "model": graph_meta.get("model", ""), "method": graph_meta.get("method", ""),
        "config": config.to_dict(),
        "execution": "concurrent engines: activation DMA, weight DMA, GEMM and vector instructions overlap "
                     "(separate memory ports for activations, weights and instructions); in-order issue with "
                     "dependency waits; double-buffered GEMM blocks; GEMM results read on chip by the softmax "
                     "(from O) and forwarded to the residual units (MOVE) where they fit",
        "mem_latency": mem_latency,
        "instructions": len(sp.program.instructions),
        "total_cycles": a.total_cycles, "ideal_cycles": a.ideal_cycles,
        "utilization": round(a.utilization, 6), "macs": a.macs,
        "clock_mhz": mhz, "latency_ms": round(latency_ms, 6), "fps": round(1e3 / latency_ms, 3),
        "cycles_by_unit": {u: sum(l.by_unit[u] for l in layers) for u in UNITS},
        "by_op": by_op(layers),
        "dram_bytes": a.total("read_bytes") + a.total("write_bytes") + a.total("fetch_bytes"),
        "dram": {"read_bytes": a.total("read_bytes"), "write_bytes": a.total("write_bytes"),
                 "fetch_bytes": a.total("fetch_bytes"), "const_read_bytes": a.total("const_read_bytes")},
        "memory_plan": dict(sorted(sp.memory.items())),
        "estimates": {
            "note": "lower bounds for further hardware changes, not the generated hardware",
            "overlapped_forwarding": {
                "what": "per node max(weight/constant DMA, compute): on-chip forwarding of every activation "
                        "(also into the array's A/B operands)",
                "total_cycles": fwd, "utilization": round(a.ideal_cycles / fwd, 6),
                "latency_ms": round(fwd / (mhz * 1e3), 6)},
            "pipelined": {
                "what": "max over units of their total busy cycles (weight/constant DMA, array, vector units): "
                        "overlap, forwarding and the units working concurrently on different rows/heads/layers",
                "total_cycles": pipe, "utilization": round(a.ideal_cycles / pipe, 6),
                "latency_ms": round(pipe / (mhz * 1e3), 6)},
        },
        "resources": res,
        "bits": bits or {},
        "per_layer": [l.to_json() for l in layers],
    }


def _fmt(n: float) -> str:
    return f"{n:,.0f}".replace(",", " ")


def render_markdown(rep: dict[str, Any]) -> str:
    """report.md: the headline numbers, estimates, resources and the per-layer table."""
    c = rep["config"]
    res = rep["resources"]
    est = rep["estimates"]
    lines = [
        f"# vit2hw build report: {rep['model']} on {c['name']} ({c['rows']}x{c['cols']}, {c['device']})",
        "",
        "## As built",
        "",
        f"The generated accelerator runs its activation DMA, weight DMA, GEMM and vector engines "
        f"concurrently (in-order issue, dependency waits, double-buffered GEMM blocks, GEMM results "
        f"passed on chip to the vector units where the scheduler could); these numbers are the cycle model's exact "
        f"prediction for it (memory latency {rep['mem_latency']} cycle).",
        "",
        "| metric | value |", "|---|---|",
        f"| total cycles | {_fmt(rep['total_cycles'])} |",
        f"| ideal (MAC-bound) cycles | {_fmt(rep['ideal_cycles'])} |",
        f"| utilization (ideal / total) | {rep['utilization']:.4f} |",
        f"| clock | {rep['clock_mhz']:g} MHz (the configuration's nominal clock; not timing-closed) |",
        f"| latency | {rep['latency_ms']:.3f} ms |",
        f"| throughput | {rep['fps']:.1f} images/s |",
        f"| DRAM traffic | {_fmt(rep['dram_bytes'])} bytes (read {_fmt(rep['dram']['read_bytes'])}, "
        f"write {_fmt(rep['dram']['write_bytes'])}, instructions {_fmt(rep['dram']['fetch_bytes'])}) |",
        f"| instructions | {_fmt(rep['instructions'])} |",
        "",
        "Busy cycles by unit (they overlap): "
        + ", ".join(f"{u} {_fmt(v)}" for u, v in rep["cycles_by_unit"].items()) + ".",
        "",
        "Where the cycles go, by operation (each node's share of the total: the cycles by which its "
        "instructions pushed the end; busy cycles overlap):",
        "",
        "| operation | nodes | share of total | cycles | array busy | vector busy | DMA busy | ideal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {e['op']} | {e['nodes']} | {e['cycles'] / max(1, rep['total_cycles']):.1%} | {_fmt(e['cycles'])} | "
          f"{_fmt(e['by_unit']['array'])} | {_fmt(e['by_unit']['vector'])} | "
          f"{_fmt(e['by_unit']['load'] + e['by_unit']['store'])} | {_fmt(e['ideal'])} |"
          for e in rep["by_op"]],
        "",
        "## Estimates for further changes (not the generated hardware)",
        "",
        "| variant | cycles | utilization | latency |", "|---|---|---|---|",
    ]
    for key in ("overlapped_forwarding", "pipelined"):
        e = est[key]
        reached = " (the generated design is already at or below it)" if e["total_cycles"] >= rep["total_cycles"] else ""
        lines.append(f"| {key}: {e['what']}{reached} | {_fmt(e['total_cycles'])} | {e['utilization']:.4f} | "
                     f"{e['latency_ms']:.3f} ms |")
    lines += ["", "## Resources", "", f"{res['method'].capitalize()} estimate ({res['basis']}).", "",
              "| resource | estimate | capacity | fraction |" + (" Yosys |" if "yosys" in res else ""),
              "|---|---|---|---|" + ("---|" if "yosys" in res else "")]
    for k in ("dsp", "lut", "ff", "bram"):
        row = f"| {k} | {res['estimate'][k]} | {res['capacity'][k]} | {res['fraction'][k]:.3f} |"
        if "yosys" in res:
            row += f" {res['yosys'].get(k, '')} |"
        lines.append(row)
    lines += ["", f"Fits {res['device']}: **{'yes' if res['fits'] else 'no'}**.", ""]
    if rep.get("bits"):
        lines += ["## Bits per module", "", "| module | weight bits | activation bits |", "|---|---|---|"]
        for mod, (wb, ab) in rep["bits"].items():
            lines.append(f"| {mod} | {wb} | {ab} |")
        lines.append("")
    lines += ["## Per layer", "",
              "`cycles`: how far the node's instructions pushed the program's end (the column adds up to "
              "the total); the unit columns are busy cycles, which overlap.", "",
              "| node | op | cycles | load | store | array | vector | ideal | DRAM bytes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for l in rep["per_layer"]:
        u = l["by_unit"]
        lines.append(f"| {l['node']} | {l['op']}{' (packed)' if l['packed'] else ''} | {_fmt(l['cycles'])} | "
                     f"{_fmt(u['load'])} | {_fmt(u['store'])} | {_fmt(u['array'])} | {_fmt(u['vector'])} | "
                     f"{_fmt(l['ideal_cycles'])} | {_fmt(l['dram_read_bytes'] + l['dram_write_bytes'])} |")
    return "\n".join(lines) + "\n"
