"""The ``vit2hw`` command line.

Every command validates its inputs first and reports a bad input as one line
``vit2hw: error: ...`` with exit status 2, writing nothing (outputs are staged in a
temporary directory and moved into place at the end). ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "COMMANDS"]

DEFAULT_CALIB_IMAGES = 32


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo model name (see `vit2hw models`)")
    p.add_argument("--weights", help="checkpoint (.pth/.pt/.safetensors); default: packaged weights "
                   "(vit_digits) or a synthetic init (DeiT) with a notice")
    p.add_argument("--download", action="store_true",
                   help="fetch the official weights when --weights is absent (falls back offline)")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", default="8", help="8 | 6 | 4 | wXaY (e.g. w4a8) | mixed (default 8)")
    p.add_argument("--method", default=None, help="calibration method (see `vit2hw methods`); with "
                   "eval --compare a comma-separated list")
    p.add_argument("--calib-data", help="ImageFolder (<wnid>/<image>) of calibration images")
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES,
                   help=f"number of calibration images (default {DEFAULT_CALIB_IMAGES})")
    p.add_argument("--act-observer", default="minmax", choices=("minmax", "percentile"),
                   help="activation range observer of the baseline quantizers")
    p.add_argument("--attn", default="auto", choices=("auto", "log2", "uniform"),
                   help="attention probabilities: 4-bit log2 codes (shift-mode P·V), 8-bit uniform, or "
                   "auto (log2 unless uniform is clearly more accurate on the calibration set)")
    p.add_argument("--budget", type=float, default=None,
                   help="average weight bits budget for --bits mixed (default 6)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load(args):
    from vit2hw.models.zoo import create_model, get_spec
    spec = get_spec(args.model)
    model = create_model(args.model, args.weights, allow_download=getattr(args, "download", False))
    return model, spec


def _calib_images(args, spec):
    from vit2hw.data import load_calib_data
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be at least 1 (got {args.calib_images})")
    return load_calib_data(spec, args.calib_data, args.calib_images).images


def _default_method(bits: str) -> str:
    from calib.methods import default_method
    return default_method(bits)


def _quantize(args, model, spec):
    from vit2hw.pipeline import quantize_model
    method = args.method or _default_method(args.bits)
    opts = {"attn": args.attn}
    if args.budget is not None:
        opts["budget"] = args.budget
    from calib.methods import get_method, validate_bits
    get_method(method)
    validate_bits(args.bits, len(model.blocks), method, budget=args.budget)
    images = _calib_images(args, spec)
    return quantize_model(model, spec, images, args.bits, method, args.act_observer,
                          progress=not args.quiet, **opts)


# ------------------------------------------------------------------ commands

def cmd_models(args) -> int:
    from vit2hw.models.zoo import format_model_table
    print(format_model_table())
    return 0


def cmd_methods(args) -> int:
    from calib.methods import format_method_table
    print(format_method_table())
    return 0


def cmd_quantize(args) -> int:
    from vit2hw.graph import save_graph
    from vit2hw.outputs import staged_dir
    from calib.methods import get_method
    model, spec = _load(args)
    method = get_method(args.method or _default_method(args.bits))
    if not method.hardware_mappable:
        raise ValueError(f"method {method.name} is not hardware-mappable and has no integer graph "
                         f"({method.summary}); `vit2hw eval` measures its fake-quant accuracy")
    t0 = time.time()
    result = _quantize(args, model, spec)
    with staged_dir(args.out) as tmp:
        save_graph(result.graph, tmp)
    g = result.graph
    print(f"quantized {spec.name} ({result.plan.method}, bits {args.bits}) in {time.time() - t0:.1f} s: "
          f"{len(g.nodes)} integer ops → {Path(args.out)}")
    print(_bits_summary(result.plan, model, spec))
    return 0


def _bits_summary(plan, model, spec) -> str:
    from calib.report import bits_summary
    return bits_summary(plan, model, spec)


def cmd_eval(args) -> int:
    from vit2hw.data import load_eval_data
    from vit2hw.outputs import write_json
    from vit2hw.pipeline import evaluate
    model, spec = _load(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1 (got {args.limit})")
    data = load_eval_data(spec, args.data, args.limit)
    if args.compare:
        return _eval_compare(args, model, spec, data)
    if args.table:
        raise ValueError("--table applies only to --compare")
    result = _quantize(args, model, spec)
    metrics = evaluate(model, spec, result, data.images, data.labels, progress=not args.quiet)
    from calib.report import bits_record
    metrics.update(bits_record(result.plan, model, spec))
    metrics.update({"model": spec.name, "method": result.plan.method, "bits": args.bits,
                    "data": data.source, "calib_images": int(result.plan.notes.get("calib_images", 0)),
                    "attn": dict(result.plan.attn_modes)})
    print(f"{'attention':16s} {', '.join(sorted(set(result.plan.attn_modes.values())))}")
    for k in ("n_images", "fp_top1", "fakequant_top1", "integer_top1", "agreement", "logit_cosine",
              "avg_weight_bits", "avg_act_bits"):
        v = metrics[k]
        print(f"{k:16s} {v:.4f}" if isinstance(v, float) else f"{k:16s} {'unavailable' if v is None else v}")
    if metrics.get("integer_unavailable"):
        print(f"{'integer':16s} not evaluated: {metrics['integer_unavailable']}")
    if metrics.get("module_bits"):
        print(_bits_summary(result.plan, model, spec))
    if args.json:
        write_json(args.json, metrics)
    return 0


def _eval_compare(args, model, spec, data) -> int:
    """Every method at every standard width (see calib.compare); --method a,b restricts the methods."""
    from calib.compare import compare_methods, format_markdown, write_table
    from calib.methods import get_method
    methods = [get_method(m.strip()).name for m in args.method.split(",")] if args.method else None
    if args.budget is not None:
        from calib.mixed import check_budget
        check_budget(args.budget)
    rows = compare_methods(model, spec, _calib_images(args, spec), data.images, data.labels, methods,
                           act_observer=args.act_observer, attn=args.attn, budget=args.budget,
                           progress=not args.quiet)
    meta = {"model": spec.name, "data": data.source, "n_images": int(len(data.images)),
            "calib_images": args.calib_images, "act_observer": args.act_observer, "attn": args.attn,
            "budget": args.budget if args.budget is not None else "default"}
    if args.table:
        md, js = write_table(args.table, rows, meta)
        print(f"wrote {md} and {js}")
    print(format_markdown(rows, meta), end="")
    return 0


def _extra_commands() -> dict:
    """Commands whose modules pull in the hardware side; imported only when the parser is built."""
    from vit2hw.cli_build import add_build_command
    from vit2hw.cli_rtl import add_rtl_command
    from vit2hw.cli_sim import add_sim_command
    return {"rtl": add_rtl_command, "build": add_build_command, "sim": add_sim_command}


COMMANDS: dict = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit2hw", description="Vision Transformer → verified integer accelerator")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="list calibration methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("quantize", help="calibrate a model and write its integer QuantizedGraph")
    _add_model_args(p)
    _add_quant_args(p)
    p.add_argument("--out", required=True, help="output directory for the graph")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="float / fake-quant / integer accuracy of a quantized model")
    _add_model_args(p)
    _add_quant_args(p)
    p.add_argument("--data", help="ImageFolder of evaluation images named by ImageNet wnid "
                   "(vit_digits: the held-out digits test split)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--compare", action="store_true",
                   help="run every method at W8A8, W6A6, W4A8, W4A4 and mixed (--bits ignored) and print a table")
    p.add_argument("--table", help="with --compare: write the table as Markdown here and as JSON beside it")
    p.set_defaults(func=cmd_eval)

    for name, add in {**_extra_commands(), **COMMANDS}.items():
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                       PermissionError]
    try:
        from sim.runner import SimulatorMissingError
        errs.append(SimulatorMissingError)
    except Exception:  # sim extras absent: nothing to add
        pass
    return tuple(errs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"vit2hw: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vit2hw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
