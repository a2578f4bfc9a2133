"""The build driver: quantized graph + accelerator configuration → RTL, program, reports.

Steps (each consumes the artifact of the one before; ``compile_graph`` runs 2–6):

1. calibrate the model into a QuantizedGraph (``vit2hw.pipeline.quantize_model``; the CLI)
2. check the configuration fits its device (analytic resources; ``--allow-overfit`` skips)
3. schedule the graph onto the configuration (``vit2hw.scheduler.schedule``)
4. analyse cycles, traffic and utilization (``vit2hw.report``)
5. write the RTL (``hdl.rtl.write_rtl``), optionally synthesize it with Yosys (``hdl.synth``)
6. write ``program.bin``/``program.json``, ``graph/``, ``report.json``, ``report.md``, ``plots/``

Everything written is byte-deterministic for the same inputs (no timestamps, no wall
times in the files); the caller stages the output directory so a failure leaves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["BuildResult", "resolve_build_config", "check_fit", "compile_graph"]


@dataclass
class BuildResult:
    report: dict
    files: list[Path]


def resolve_build_config(config_file: str | None, target: str | None, array: str | None,
                         allow_overfit: bool = False):
    """The AcceleratorConfig of the options (``ValueError`` for bad input). Without
    ``allow_overfit`` a design beyond the device's resources is an error (``hdl.rtl.check_resources``)."""
    from vit2hw.cli_rtl import resolve_config
    return resolve_config(config_file, target, array, check=not allow_overfit)


def check_fit(config, allow_overfit: bool = False) -> dict:
    """The analytic resource estimate; ``ValueError`` if it exceeds the device (unless allowed)."""
    from hdl.rtl import check_resources
    from vit2hw.report import estimate_resources
    if allow_overfit:
        return estimate_resources(config)
    try:
        return check_resources(config)
    except ValueError as exc:
        raise ValueError(f"{exc}; pass --allow-overfit to build anyway") from None


def _bits(graph) -> dict:
    mb = graph.meta.get("module_bits") or {}
    return {m: list(v) for m, v in sorted(mb.items())}


def compile_graph(graph, config, out_dir: Path | str, synth: bool = False, allow_overfit: bool = False,
                  progress: Callable[[str], None] = print, mem_latency: int = 1) -> BuildResult:
    """Steps 2–6 into ``out_dir`` (which the caller stages). Returns the report and files."""
    from hdl.rtl import TOP_MODULE, write_rtl
    from vit2hw.graph import save_graph
    from vit2hw.outputs import write_json
    from vit2hw.plots import write_plots
    from vit2hw.report import analyze, build_report, render_markdown
    from vit2hw.scheduler import schedule

    out = Path(out_dir)
    res = check_fit(config, allow_overfit)
    progress(f"[schedule] {len(graph.nodes)} ops onto {config.name} ({config.rows}x{config.cols}, "
             f"{config.vector_lanes} lanes, {config.mem_bus_bits}-bit bus)")
    sp = schedule(graph, config, mem_latency)
    progress(f"[schedule] {len(sp.program.instructions)} instructions, {sp.memory.get('total', 0)} bytes of "
             f"external memory")
    analysis = analyze(sp, config, mem_latency)
    synth_counts = None
    files: list[Path] = []
    progress("[rtl] writing Verilog")
    # the top only: the per-unit files double the generation time and the build synthesizes the top
    files += write_rtl(config, out / "rtl", units=False)
    if synth:
        from hdl.synth import synthesize
        progress("[synth] yosys synth_xilinx on rtl/accelerator.v (minutes)")
        r = synthesize([out / "rtl" / "accelerator.v"], TOP_MODULE, family=config.target.family,
                       log_path=out / "rtl" / "synth.log")
        synth_counts = r.counts()
        files.append(out / "rtl" / "synth.log")
    rep = build_report(sp, config, analysis, graph.meta, _bits(graph), synth_counts, mem_latency)
    if synth_counts is not None:
        rep["resources"]["fits_yosys"] = all(synth_counts[k] <= res["capacity"][k] for k in synth_counts)
    progress("[write] program, graph, reports, plots")
    (out / "program.bin").write_bytes(sp.program.to_bytes())
    (out / "program.json").write_text(sp.program.to_json())
    io = {"inputs": {k: p.to_json() for k, p in sp.inputs.items()},
          "outputs": {k: p.to_json() for k, p in sp.outputs.items()},
          "mem_bytes": sp.mem_bytes, "per_instr_layer": sp.per_instr_layer}
    write_json(out / "program_io.json", io)
    files += [out / "program.bin", out / "program.json", out / "program_io.json"]
    save_graph(graph, out / "graph")
    files += sorted((out / "graph").iterdir())
    write_json(out / "report.json", rep)
    (out / "report.md").write_text(render_markdown(rep))
    files += [out / "report.json", out / "report.md"]
    files += write_plots(rep, out / "plots")
    progress(f"[report] {rep['total_cycles']} cycles (ideal {rep['ideal_cycles']}, utilization "
             f"{rep['utilization']:.4f}), {rep['latency_ms']:.3f} ms at {rep['clock_mhz']:g} MHz, "
             f"{rep['fps']:.1f} FPS; pipelined estimate {rep['estimates']['pipelined']['latency_ms']:.3f} ms; "
             f"fits {rep['resources']['device']}: {rep['resources']['fits']}")
    return BuildResult(rep, sorted(files))
