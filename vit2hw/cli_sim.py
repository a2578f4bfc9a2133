"""``vit2hw sim``: run a quantized model on the generated accelerator RTL (Icarus + cocotb).

``vit2hw sim --model M --bits B [--weights W] [--calib-data D] [--data DIR] [--images N]
[--target T | --array RxC | --config FILE] [--method ...] [--simulator icarus|verilator]
[--blocks N] [--out DIR]``

1. quantize the model (``vit2hw.pipeline.quantize_model``) and schedule its graph onto the
   accelerator configuration (``vit2hw.scheduler.schedule``);
2. run the program on the RTL once per real input image (vit_digits: the digits test split;
   DeiT: ``--data``), all images in one simulation (``sim.run_program``, Icarus + cocotb), or
   with ``--simulator verilator`` on the Verilator-compiled RTL (``sim.verilator_run``, same
   memory model, fast enough for DeiT blocks: ``--blocks N`` keeps the first N blocks);
3. compare every image's output codes with ``vit2hw.reference.run_graph`` element by element,
   and the RTL's cycle count with ``vit2hw.cyclemodel.program_cycles``.

Writes ``DIR/sim.json`` (summary and per-image results), ``DIR/sim.md`` (the same as a table)
and ``DIR/sim.log`` (the simulator's own log). Exit status 0 when every image is bit-exact
and takes the predicted cycles, 1 otherwise (the message names the first differing output),
2 for bad input or a missing simulator.

The default configuration (:data:`SIM_CONFIG`) is the smallest useful one, a 4×4 array with a
32-bit bus and 4 vector lanes: Icarus's speed falls with the array's size faster than the
cycle count does (docs/verification.md has the measurements).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["add_sim_command", "cmd_sim", "sim_config", "SIM_CONFIG", "DEFAULT_IMAGES"]

DEFAULT_IMAGES = 8

#: the default simulated accelerator: 4×4 array, 32-bit bus, 4 lanes, small scratchpads
SIM_CONFIG = dict(name="sim4x4", rows=4, cols=4, vector_lanes=4, mem_bus_bits=32,
                  act_buf_bytes=4 * 4 * 256, weight_buf_bytes=4 * 4 * 1024, out_buf_bytes=4 * 4 * 1024,
                  device="xc7z020")


def sim_config(spec, config_file: str | None = None, target: str | None = None, array: str | None = None):
    """The configuration to simulate: a file or preset (as ``vit2hw rtl``), else :data:`SIM_CONFIG`
    with its softmax/LayerNorm row limits sized for ``spec`` (and ``array`` reshaping it)."""
    from hdl.config import AcceleratorConfig, parse_array
    from hdl.rtl import check_resources
    from vit2hw.cli_rtl import resolve_config
    if config_file or target:
        return resolve_config(config_file, target, array)
    tokens = (spec.img_size // spec.patch_size) ** 2 + 1
    lanes = SIM_CONFIG["vector_lanes"]
    cfg = AcceleratorConfig(**SIM_CONFIG, max_tokens=-(-tokens // lanes) * lanes,
                            max_channels=-(-spec.embed_dim // lanes) * lanes)
    if array:
        cfg = cfg.with_array(*parse_array(array))
    check_resources(cfg)
    return cfg


@contextlib.contextmanager
def _stdout_to(path: Path):
    """Send file descriptor 1 (the simulator subprocess inherits it) to ``path``; yields a
    writer to the original stdout for progress lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield console
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        console.close()


def _first_difference(got, want) -> tuple[tuple[int, ...], int, int, int]:
    import numpy as np
    bad = np.argwhere(got != want)
    idx = tuple(int(i) for i in bad[0])
    return idx, int(got[idx]), int(want[idx]), int(len(bad))


def _markdown(doc: dict) -> str:
    lines = [f"# RTL simulation: {doc['model']} ({doc['bits']}, {doc['method']}) on {doc['config']['name']}",
             "",
             f"- bit-exact: **{'yes' if doc['bit_exact'] else 'NO'}** on {doc['n_images']} images "
             f"({doc['data']})",
             f"- simulator: {doc['simulator']}; transformer blocks: {doc['blocks']}",
             f"- cycles: RTL {doc['rtl_cycles']}, cycle model {doc['model_cycles']} "
             f"({'equal' if doc['cycles_equal'] else 'DIFFERENT'})",
             f"- array {doc['config']['rows']}x{doc['config']['cols']}, bus {doc['config']['mem_bus_bits']} bit, "
             f"{doc['config']['vector_lanes']} lanes; {doc['n_instructions']} instructions",
             f"- simulation: {doc['sim_wall_s']:.1f} s for {doc['n_images']} images "
             f"({doc['cycles_per_s']:.0f} cycles/s per simulator, {doc['jobs']} in parallel), "
             f"build {doc['build_wall_s']:.1f} s",
             "",
             "| image | label | reference top-1 | RTL top-1 | bit-exact | mismatches | cycles | wall s |",
             "|---:|---:|---:|---:|:---:|---:|---:|---:|"]
    for r in doc["images"]:
        lines.append(f"| {r['index']} | {r['label']} | {r['reference_top1']} | {r['rtl_top1']} | "
                     f"{'yes' if r['bit_exact'] else 'NO'} | {r['mismatches']} | {r['cycles']} | {r['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _first_blocks(model, spec, n: int):
    """The model cut to its first ``n`` transformer blocks (patch embedding, final norm and
    head kept): one real DeiT block through the RTL without simulating all twelve."""
    import dataclasses

    import torch
    if not 1 <= n <= spec.depth:
        raise ValueError(f"--blocks must be between 1 and {spec.depth} for {spec.name} (got {n})")
    model.blocks = torch.nn.ModuleList(list(model.blocks)[:n])
    return model, dataclasses.replace(spec, depth=n)


def cmd_sim(args) -> int:
    import numpy as np

    from sim.run_program import MemoryRun, run_program
    from sim.runner import require_icarus
    from sim.verilator_run import require_verilator, run_program_verilator
    from vit2hw.cli import _load, _quantize
    from vit2hw.cyclemodel import program_cycles
    from vit2hw.data import load_eval_data
    from vit2hw.isa import Segment
    from vit2hw.outputs import staged_dir, write_json
    from vit2hw.pipeline import graph_input
    from vit2hw.reference import run_graph
    from vit2hw.scheduler import read_output, schedule, write_input

    if args.simulator == "verilator":
        require_verilator()
        runner = None          # needs the build directory: set below
    else:
        require_icarus()
        runner = run_program
    if args.images < 1:
        raise ValueError(f"--images must be at least 1 (got {args.images})")
    t_all = time.time()
    model, spec = _load(args)
    if args.blocks is not None:
        model, spec = _first_blocks(model, spec, args.blocks)
    cfg = sim_config(spec, args.config, args.target, args.array)
    data = load_eval_data(spec, args.data, args.images)
    result = _quantize(args, model, spec)
    graph = result.graph
    sp = schedule(graph, cfg)
    model_cycles = program_cycles(sp.program, cfg)
    if len(sp.inputs) != 1:
        raise ValueError(f"vit2hw sim feeds one input image; the program has inputs {sorted(sp.inputs)}")
    (in_place,) = sp.inputs.values()
    codes = graph_input(data.images)
    reference = run_graph(graph, codes)
    runs = []
    for i in range(len(codes)):
        segs: dict[int, bytes] = {}
        write_input(segs, in_place, codes[i])
        runs.append(MemoryRun(f"image{i}", tuple(Segment(a, b, "input") for a, b in segs.items())))
    print(f"{spec.name} ({result.plan.method}, bits {args.bits}) on {cfg.name} ({cfg.rows}x{cfg.cols}, "
          f"{cfg.mem_bus_bits}-bit bus, {cfg.vector_lanes} lanes): {len(sp.program.instructions)} instructions, "
          f"{model_cycles} cycles predicted; simulating {len(runs)} images", flush=True)

    rows: dict[int, dict] = {}
    first_bad: dict[int, str] = {}
    main_out = graph.outputs[0]
    lock = threading.Lock()

    def check(res, console) -> None:
        i = int(res.name.removeprefix("image"))
        row = {"index": i, "label": int(data.labels[i]), "cycles": res.cycles, "wall_s": res.wall_s,
               "bit_exact": True, "mismatches": 0, "outputs": {}}
        for name, place in sp.outputs.items():
            got = read_output(res.memory, place)
            want = reference[name][i].reshape(place.shape)
            n_bad = int((got != want).sum())
            row["outputs"][name] = {"mismatches": n_bad, "elements": int(want.size)}
            row["mismatches"] += n_bad
            if n_bad:
                row["bit_exact"] = False
                idx, g, w, _ = _first_difference(got, want)
                first_bad.setdefault(i, f"image {i}: output {name}{list(idx)} is {g} on the RTL, {w} in the "
                                        f"reference ({n_bad} of {want.size} elements differ)")
            if name == main_out:
                row["reference_top1"] = int(want.reshape(-1, want.shape[-1])[0].argmax())
                row["rtl_top1"] = int(got.reshape(-1, got.shape[-1])[0].argmax())
        with lock:
            rows[i] = row
            verdict = "bit-exact" if row["bit_exact"] else f"{row['mismatches']} MISMATCHES"
            cyc = "= model" if res.cycles == model_cycles else f"!= model {model_cycles}"
            print(f"image {i} ({len(rows)}/{len(runs)} done, label {row['label']}): {verdict}, top-1 rtl "
                  f"{row.get('rtl_top1')} ref {row.get('reference_top1')}, {res.cycles} cycles {cyc}, "
                  f"{res.wall_s:.1f} s ({res.cycles / max(res.wall_s, 1e-9):.0f} cycles/s)",
                  file=console, flush=True)

    jobs = max(1, min(args.jobs, len(runs)))
    groups = [runs[j::jobs] for j in range(jobs)]
    with staged_dir(args.out) as out_dir, tempfile.TemporaryDirectory(prefix="vit2hw-sim-") as build:
        t_build = time.time()
        if runner is None:     # one Verilator build shared by every job
            from sim.verilator_run import build_verilator
            exe = build_verilator(cfg, Path(build) / "verilator")
            runner = functools.partial(run_program_verilator, exe=exe)
        with _stdout_to(out_dir / "sim.log") as console, ThreadPoolExecutor(jobs) as pool:
            # one simulation per group; the threads only wait on their simulator processes
            futures = [pool.submit(runner, cfg, sp.program, grp, Path(build) / f"job{j}",
                                   mem_size=sp.mem_bytes, max_cycles=2 * model_cycles + 10_000,
                                   on_result=lambda r: check(r, console)) for j, grp in enumerate(groups)]
            results = [r for f in futures for r in f.result()]
        per_image = [rows[i] for i in sorted(rows)]
        sim_wall = time.time() - t_build
        build_wall = sim_wall - max(sum(r.wall_s for r in grp_res) for grp_res in
                                    [[r for r in results if r.name in {g.name for g in grp}] for grp in groups])
        rtl = [r.cycles for r in results]
        sim_wall = sim_wall - build_wall
        doc = {
            "format": "vit2hw.sim", "model": spec.name, "bits": args.bits, "method": result.plan.method,
            "blocks": spec.depth, "simulator": args.simulator,
            "data": data.source, "config": cfg.to_dict(), "n_images": len(results),
            "n_instructions": len(sp.program.instructions),
            "bit_exact": all(r["bit_exact"] for r in per_image),
            "rtl_cycles": max(rtl), "rtl_cycles_min": min(rtl), "model_cycles": model_cycles,
            "cycles_equal": all(c == model_cycles for c in rtl),
            "cycle_error_pct": 100.0 * (max(abs(c - model_cycles) for c in rtl)) / model_cycles,
            "jobs": jobs, "sim_wall_s": sim_wall,
            "cycles_per_s": sum(rtl) / max(sum(r.wall_s for r in results), 1e-9),
            "build_wall_s": build_wall, "total_wall_s": time.time() - t_all,
            "reference_top1_acc": float(np.mean([r["reference_top1"] == r["label"] for r in per_image]) * 100),
            "rtl_top1_acc": float(np.mean([r["rtl_top1"] == r["label"] for r in per_image]) * 100),
            "images": per_image,
        }
        write_json(out_dir / "sim.json", doc)
        (out_dir / "sim.md").write_text(_markdown(doc))
    print(f"{'bit-exact' if doc['bit_exact'] else 'NOT bit-exact'} on {doc['n_images']} images; RTL "
          f"{doc['rtl_cycles']} cycles, model {model_cycles}; {sim_wall:.1f} s simulated "
          f"({doc['cycles_per_s']:.0f} cycles/s) → {Path(args.out) / 'sim.json'}")
    if first_bad:
        print(f"vit2hw: error: RTL output differs from the reference: {first_bad[min(first_bad)]}",
              file=sys.stderr)
        return 1
    if not doc["cycles_equal"]:
        bad = next(r for r in per_image if r["cycles"] != model_cycles)
        print(f"vit2hw: error: image {bad['index']} took {bad['cycles']} RTL cycles; the cycle model "
              f"predicts {model_cycles}", file=sys.stderr)
        return 1
    return 0


def add_sim_command(subparsers) -> argparse.ArgumentParser:
    """Register ``sim`` on the CLI's subparsers."""
    from vit2hw.cli import _add_model_args, _add_quant_args
    p = subparsers.add_parser("sim", help="run a quantized model on the accelerator RTL (cocotb + Icarus): "
                              "logits bit-exact vs the integer reference, cycles vs the cycle model")
    _add_model_args(p)
    _add_quant_args(p)
    p.add_argument("--data", help="ImageFolder of input images (<wnid>/<image>); vit_digits uses its "
                   "digits test split")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                   help=f"number of input images to simulate (default {DEFAULT_IMAGES})")
    p.add_argument("--jobs", type=int, default=1,
                   help="simulate the images in this many parallel simulator processes (default 1)")
    p.add_argument("--config", help="AcceleratorConfig JSON file")
    p.add_argument("--target", help="configuration preset (default, pynq-z2, zcu102); default: a 4x4 "
                   "array with a 32-bit bus, the fastest to simulate")
    p.add_argument("--array", help="array shape RxC (reshapes the configuration)")
    p.add_argument("--simulator", choices=("icarus", "verilator"), default="icarus",
                   help="icarus (cocotb testbench, default) or verilator (compiled C++ harness with the same "
                        "memory model; orders of magnitude faster, for DeiT-scale runs)")
    p.add_argument("--blocks", type=int, help="keep only the model's first N transformer blocks")
    p.add_argument("--out", default="sim_out", help="output directory (default sim_out)")
    p.set_defaults(func=cmd_sim)
    return p
