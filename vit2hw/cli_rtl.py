"""``vit2hw rtl``: write the accelerator's Verilog for a configuration.

``vit2hw rtl [--config FILE | --target T] [--array RxC] --out DIR``: the configuration is a
JSON ``AcceleratorConfig`` file, a preset (``--target``), or the default preset;
``--array`` reshapes it. The output is staged in a temporary directory and moved into
place when complete. Bad input (unknown target, malformed ``RxC``, an array the target
cannot hold) is one ``ValueError`` line.
"""

from __future__ import annotations

import argparse

__all__ = ["add_rtl_command", "resolve_config", "cmd_rtl"]


def resolve_config(config_file: str | None, target: str | None, array: str | None, check: bool = True):
    """The ``AcceleratorConfig`` the options describe (``ValueError`` for bad input); ``check``
    also rejects an array the target device cannot hold."""
    from hdl.config import AcceleratorConfig, get_preset, parse_array
    from hdl.rtl import check_resources
    if config_file and target:
        raise ValueError("give either --config or --target, not both")
    if config_file:
        try:
            cfg = AcceleratorConfig.load(config_file)
        except (OSError, TypeError, KeyError) as exc:
            raise ValueError(f"cannot read accelerator config {config_file}: {exc}") from None
    else:
        cfg = get_preset(target or "default")
    if array:
        rows, cols = parse_array(array)
        cfg = cfg.with_array(rows, cols)
    if check:
        check_resources(cfg)
    return cfg


def cmd_rtl(args) -> int:
    from hdl.rtl import write_rtl
    from vit2hw.outputs import staged_dir
    cfg = resolve_config(args.config, args.target, args.array)
    with staged_dir(args.out) as tmp:
        files = write_rtl(cfg, tmp, units=not args.top_only)
    print(f"wrote {len(files)} files for {cfg.name} ({cfg.rows}x{cfg.cols}, {cfg.device}) to {args.out}")
    return 0


def add_rtl_command(subparsers) -> argparse.ArgumentParser:
    """Register ``rtl`` on the CLI's subparsers."""
    p = subparsers.add_parser("rtl", help="write the accelerator's Verilog (top, units, config.json)")
    p.add_argument("--config", help="AcceleratorConfig JSON file")
    p.add_argument("--target", help="configuration preset (default, pynq-z2, zcu102)")
    p.add_argument("--array", help="array shape RxC, e.g. 8x8 (overrides the config's)")
    p.add_argument("--top-only", action="store_true", help="only accelerator.v and config.json")
    p.add_argument("--out", required=True, help="output directory (replaced when complete)")
    p.set_defaults(func=cmd_rtl)
    return p
