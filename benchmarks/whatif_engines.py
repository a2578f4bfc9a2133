"""What-if: the cycles of a quantized graph's program if an engine's work were cheaper.

Schedules the graph onto a target once as it is and once per what-if, with the cycle
model's engine cycles scaled for the named kinds of instruction, and prints total cycles
and utilization (MAC-bound ideal / total) for each. The program is re-scheduled (blocking,
reordering) under each what-if, as the compiler would schedule faster hardware, so the
figures answer "how much would a 2x DMA buy" rather than "how much of the DMA time is
exposed today". Nothing here changes the compiler: the scaling is applied to
``vit2hw.cyclemodel.engine_cycles`` for the duration of one schedule.

    python benchmarks/whatif_engines.py DIR/graph --target zcu102 \\
        dma=0.5,wdma=0.5 dma=0.5,wdma=0.5,vector=0.5 store_to_a=0

Kinds: ``dma`` (the DMA engine's LOADs and STOREs to memory: activations, and the LOADs into
B or P the reordering hands it, ``on_dma``), ``store_to_a`` (STOREs into A), ``wdma`` (the
weight DMA's LOADs of weights and constants), ``vector`` (LayerNorm, softmax, LUT, residual add,
MOVE), ``gemm``. A factor of 0 makes that work take one cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("dma", "store_to_a", "wdma", "vector", "gemm")


def kind_of(ins) -> str | None:
    from vit2hw.isa import Engine, Op, instr_engine
    e = instr_engine(ins)
    if e is None:
        return None
    if ins.op == Op.STORE and ins["dst_a"]:
        return "store_to_a"
    return {Engine.DMA: "dma", Engine.WDMA: "wdma", Engine.VECTOR: "vector", Engine.GEMM: "gemm"}[e]


def parse_spec(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        key, _, val = part.partition("=")
        if key not in KINDS or not val:
            raise SystemExit(f"what-if {text!r}: each part is KIND=FACTOR with KIND one of {', '.join(KINDS)}")
        out[key] = float(val)
    return out


@contextlib.contextmanager
def scaled_engines(factors: dict[str, float]):
    """``engine_cycles`` scaled per kind while the block runs (the reordering and the
    timeline both read it)."""
    import vit2hw.cyclemodel as cm
    import vit2hw.reorder as ro
    orig = cm.engine_cycles

    def scaled(ins, g, lat=cm.DEFAULT_MEM_LATENCY):
        c = orig(ins, g, lat)
        f = factors.get(kind_of(ins))
        return c if f is None or c == 0 else max(1, int(c * f))
    cm.engine_cycles = ro.engine_cycles = scaled
    try:
        yield
    finally:
        cm.engine_cycles = ro.engine_cycles = orig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", help="a graph directory (vit2hw build's DIR/graph, or vit2hw quantize's output)")
    ap.add_argument("--target", default="zcu102")
    ap.add_argument("whatif", nargs="*", help="KIND=FACTOR[,KIND=FACTOR...]")
    args = ap.parse_intermixed_args()
    from hdl.config import get_preset
    from vit2hw.cyclemodel import timeline
    from vit2hw.graph import load_graph
    from vit2hw.report import analyze
    from vit2hw.scheduler import schedule
    g, cfg = load_graph(args.graph), get_preset(args.target)
    factors = [parse_spec(s) for s in args.whatif]
    built = analyze(schedule(g, cfg), cfg)
    ideal = built.ideal_cycles
    print(f"{args.target}: MAC-bound ideal {ideal} cycles")
    print(f"{'what-if':40s} {'cycles':>10s} {'utilization':>12s}")
    print(f"{'as built':40s} {built.total_cycles:10d} {built.utilization:12.3f}", flush=True)
    for spec, f in zip(args.whatif, factors):
        with scaled_engines(f):
            total = timeline(schedule(g, cfg).program, cfg).total
        print(f"{spec:40s} {total:10d} {ideal / total:12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
