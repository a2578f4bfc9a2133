"""Benchmark: images per second of the integer reference executor on DeiT-Tiny (8-bit).

Calibrates once (FQ-ViT, 8 bits, the CLI's defaults) or loads a graph written by
``vit2hw quantize`` (``--graph``), then times :func:`vit2hw.reference.run_graph` over
``--images`` images in batches of ``--batch``. A second, separately timed pass runs the
same nodes one by one through :func:`vit2hw.reference.run_node` to attribute the time
to op kinds (that pass is not part of the images/s figure).

Uses the real weights and images of ``../shared`` when present, else synthetic ones
(printed as a notice). Target: at least 10 images/s. The script reports, never fails.

    python benchmarks/bench_reference.py [--images 32] [--batch 8] [--repeat 2] [--graph DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["main", "SHARED", "TARGET_IMAGES_PER_S"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.pth"
DATA = SHARED / "data" / "imagenet-samples"
TARGET_IMAGES_PER_S = 10.0
MODEL = "deit_tiny"


def _images(spec, n: int) -> np.ndarray:
    from vit2hw.data import load_imagefolder, synthetic_images
    if DATA.is_dir():
        return load_imagefolder(DATA, spec, limit=n).images
    print("notice: ../shared images absent: timing synthetic images")
    return synthetic_images(spec, n, seed=1).images


def _graph(args, spec, images: np.ndarray):
    from vit2hw.graph import load_graph
    if args.graph:
        print(f"graph: loaded from {args.graph}")
        return load_graph(args.graph)
    from vit2hw.models.zoo import create_model
    from vit2hw.pipeline import quantize_model
    real = WEIGHTS.is_file()
    if not real:
        print("notice: ../shared weights absent: synthetic DeiT-Tiny weights (timing only)")
    model = create_model(MODEL, str(WEIGHTS) if real else None)
    t0 = time.perf_counter()
    result = quantize_model(model, spec, images[:args.calib_images], "8", "fqvit", progress=False,
                            attn=args.attn)
    modes = sorted(set(result.plan.attn_modes.values()))
    print(f"graph: calibrated on {args.calib_images} images in {time.perf_counter() - t0:.1f} s "
          f"(fqvit, 8 bits, attention {', '.join(modes)})")
    return result.graph


def _time_run_graph(graph, x: np.ndarray, batch: int) -> float:
    from vit2hw.reference import run_graph
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        run_graph(graph, x[i:i + batch])
    return time.perf_counter() - t0


def _op_breakdown(graph, x: np.ndarray, batch: int) -> dict[str, float]:
    """Seconds per op kind, executing node by node as run_graph does."""
    from vit2hw.reference import run_node
    per_op: dict[str, float] = defaultdict(float)
    for i in range(0, len(x), batch):
        env = {graph.inputs[0]: x[i:i + batch]}
        for node in graph.topological():
            t0 = time.perf_counter()
            env[node.output] = run_node(node, graph.tensors, [env[t] for t in node.inputs])
            per_op[node.op] += time.perf_counter() - t0
    return dict(per_op)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images to run (default 32)")
    ap.add_argument("--batch", type=int, default=8, help="images per run_graph call (default 8)")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes; the best is reported")
    ap.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32)")
    ap.add_argument("--attn", default="auto", choices=("auto", "log2", "uniform"))
    ap.add_argument("--graph", help="a graph directory written by `vit2hw quantize` (skips calibration)")
    args = ap.parse_args(argv)

    from vit2hw.models.zoo import get_spec
    from vit2hw.pipeline import graph_input

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    spec = get_spec(MODEL)
    images = _images(spec, max(args.images, 0 if args.graph else args.calib_images))
    graph = _graph(args, spec, images)
    x = graph_input(images[:args.images])
    n = len(x)

    _time_run_graph(graph, x[:min(n, args.batch)], args.batch)  # warm-up: BLAS threads, page faults
    times = []
    for r in range(max(1, args.repeat)):
        load = os.getloadavg()[0]
        t = _time_run_graph(graph, x, args.batch)
        times.append(t)
        print(f"pass {r + 1}: {n} images in {t:6.2f} s = {n / t:6.2f} images/s  (load average before: {load:.2f})")
    best = min(times)
    ips = n / best
    print(f"best           : {ips:6.2f} images/s  target >= {TARGET_IMAGES_PER_S:.0f}  "
          f"{'met' if ips >= TARGET_IMAGES_PER_S else 'NOT met'}   (batch {args.batch})")

    per_op = _op_breakdown(graph, x, args.batch)
    total = sum(per_op.values())
    counts = defaultdict(int)
    for node in graph.nodes.values():
        counts[node.op] += 1
    print(f"per-op time (one node-by-node pass over {n} images, {total:.2f} s):")
    print(f"  {'op':14s} {'nodes':>5s} {'seconds':>8s} {'share':>6s} {'ms/image':>9s}")
    for op, t in sorted(per_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:14s} {counts[op]:5d} {t:8.2f} {100 * t / total:5.1f}% {1000 * t / n:9.2f}")
    print(f"load average   : {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min, after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
