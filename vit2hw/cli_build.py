"""``vit2hw build``: calibrate a model and compile it into RTL, a program and reports.

``vit2hw build --model M --bits B [--weights W] [--calib-data D] [--calib-images N]
[--method M] [--target T | --array RxC | --config F] [--synth] [--allow-overfit] [--out DIR]``

The configuration is checked first (unknown target, malformed ``RxC``, an array the
device cannot hold: one error line, nothing written), then the model is calibrated,
scheduled and written; the whole output directory is staged and appears only complete.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_build_command", "cmd_build"]


def _progress(quiet: bool):
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return say


def cmd_build(args) -> int:
    from vit2hw.build import check_fit, compile_graph, resolve_build_config
    from vit2hw.cli import _load, _quantize
    from vit2hw.outputs import staged_dir
    say = _progress(args.quiet)
    t0 = time.time()
    if args.out is None:
        args.out = f"out/{args.model}-{args.bits}"
    if args.config and (args.target or args.array):
        raise ValueError("give --config alone, or --target and/or --array")
    cfg = resolve_build_config(args.config, args.target, args.array, args.allow_overfit)
    check_fit(cfg, args.allow_overfit)
    say(f"[config] {cfg.name}: {cfg.rows}x{cfg.cols} array, {cfg.clock_mhz:g} MHz, {cfg.device}")
    model, spec = _load(args)
    say(f"[calibrate] {spec.name}, bits {args.bits}, {args.calib_images} calibration images")
    result = _quantize(args, model, spec)
    try:
        with staged_dir(args.out) as tmp:
            built = compile_graph(result.graph, cfg, tmp, synth=args.synth, allow_overfit=args.allow_overfit,
                                  progress=say)
    except NotImplementedError as exc:      # an op this hardware cannot run: a user-facing error
        raise ValueError(str(exc)) from None
    rep = built.report
    print(f"built {spec.name} (bits {args.bits}) for {cfg.name} in {time.time() - t0:.1f} s: "
          f"{rep['total_cycles']} cycles, utilization {rep['utilization']:.4f}, "
          f"{rep['latency_ms']:.3f} ms at {rep['clock_mhz']:g} MHz ({rep['fps']:.1f} FPS) → {args.out}")
    return 0


def add_build_command(subparsers) -> argparse.ArgumentParser:
    """Register ``build`` on the CLI's subparsers."""
    from vit2hw.cli import _add_model_args, _add_quant_args
    p = subparsers.add_parser("build", help="calibrate, schedule and generate RTL, program and reports")
    _add_model_args(p)
    _add_quant_args(p)
    p.add_argument("--config", help="AcceleratorConfig JSON file")
    p.add_argument("--target", help="configuration preset (default, pynq-z2, zcu102); default: default")
    p.add_argument("--array", help="array shape RxC, e.g. 8x8 (reshapes the preset)")
    p.add_argument("--synth", action="store_true", help="also synthesize the RTL with Yosys (slow)")
    p.add_argument("--allow-overfit", action="store_true",
                   help="build even if the design exceeds the target device")
    p.add_argument("--out", default=None,
                   help="output directory, replaced when complete (default: out/<model>-<bits>)")
    p.set_defaults(func=cmd_build)
    return p
