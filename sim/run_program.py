"""Run an accelerator program on the generated RTL (Icarus + cocotb) for one or more memory images.

:func:`run_program` is the generic driver behind ``vit2hw sim`` and the RTL tests: given an
``AcceleratorConfig``, the Verilog of that configuration (written here with
:func:`hdl.rtl.write_rtl` unless a directory of it is given), an :class:`vit2hw.isa.Program`
and, per run, the segments that differ between runs (an input image), it simulates the top
level ``vit2hw_accelerator`` against :class:`sim.memory.MemoryModel` and returns, per run,
the final memory and the cycle count from ``start`` to ``done``. All runs share one Icarus
compile and one cocotb launch (``sim/tb_program.py``), so compile time is paid once.

The memory model answers every read after exactly ``latency`` cycles and is always ready:
the setting under which ``vit2hw.cyclemodel.program_cycles`` is exact.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from vit2hw.isa import Program, ProgramError, Segment

from .runner import require_icarus, run_cocotb

__all__ = ["MemoryRun", "RunResult", "run_program", "default_mem_size", "TB_MODULE"]

TB_MODULE = "sim.tb_program"
_PERIOD_NS = 10
_ALIGN = 1 << 16


@dataclass(frozen=True)
class MemoryRun:
    """One run: a name and the segments written over the program's image (e.g. the input)."""
    name: str
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run."""
    name: str
    memory: bytes          # the whole external memory after END
    cycles: int            # the accelerator's cycles counter (start exclusive, done inclusive)
    wall_s: float          # simulation wall time of this run (compile excluded)
    mem_reads: int
    mem_writes: int

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or addr + n > len(self.memory):
            raise ValueError(f"read [{addr:#x}, {addr + n:#x}) outside the {len(self.memory)}-byte memory")
        return self.memory[addr:addr + n]


def default_mem_size(program: Program, runs: Sequence[MemoryRun] = ()) -> int:
    """Bytes of memory: ``program.meta['mem_size']`` if the program states it, else the end of
    its highest segment (over all runs) rounded up to 64 KiB plus 64 KiB of headroom."""
    stated = program.meta.get("mem_size")
    if stated:
        return int(stated)
    ends = [s.addr + len(s.data) for s in program.image()]
    ends += [s.addr + len(s.data) for r in runs for s in r.segments]
    return -(-max(ends) // _ALIGN) * _ALIGN + _ALIGN


def _check_overlays(program: Program, runs: Sequence[MemoryRun], mem_size: int) -> None:
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique: {names}")
    code = program.image()[0]
    for r in runs:
        for s in r.segments:
            if s.addr < 0 or s.addr + len(s.data) > mem_size:
                raise ProgramError(f"run {r.name}: segment {s.name!r} [{s.addr:#x}, {s.addr + len(s.data):#x}) "
                                   f"outside the {mem_size}-byte memory")
            if s.addr < code.addr + len(code.data) and code.addr < s.addr + len(s.data):
                raise ProgramError(f"run {r.name}: segment {s.name!r} overwrites the program's code")


def run_program(config, program: Program, runs: Sequence[MemoryRun], build_dir: Path | str, *,
                rtl_dir: Path | str | None = None, mem_size: int | None = None, latency: int = 1,
                max_cycles: int = 50_000_000,
                on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Simulate ``program`` once per entry of ``runs`` on the RTL of ``config``.

    ``rtl_dir``: a directory written by ``hdl.rtl.write_rtl(config, ...)`` (its
    ``accelerator.v`` is used); by default the Verilog is written into ``build_dir``.
    ``build_dir`` holds the compiled simulation, the per-run files and the results; it must
    not be shared by concurrent calls. Raises :class:`sim.runner.SimulatorMissingError`
    without Icarus and :class:`sim.runner.SimulationFailed` if a run does not reach END
    within ``max_cycles``; a run that stops on an unknown opcode raises ``RuntimeError``.
    ``on_result`` is called (in the calling thread) with each run's result as soon as that
    run finishes, while later runs are still simulating.
    """
    require_icarus()
    if not runs:
        raise ValueError("run_program needs at least one run")
    build = Path(build_dir).resolve()
    build.mkdir(parents=True, exist_ok=True)
    mem_size = mem_size or default_mem_size(program, runs)
    _check_overlays(program, runs, mem_size)
    if rtl_dir is None:
        from hdl.rtl import write_rtl
        write_rtl(config, build / "rtl", units=False)
        rtl_dir = build / "rtl"
    top = Path(rtl_dir) / "accelerator.v"
    if not top.is_file():
        raise FileNotFoundError(f"{top} not found: write it with `vit2hw rtl` or hdl.rtl.write_rtl")

    prog_path = build / "program.bin"
    prog_path.write_bytes(program.to_bytes())
    run_specs = []
    for i, r in enumerate(runs):
        overlay = build / f"run{i}.bin"
        overlay.write_bytes(Program(segments=list(r.segments)).to_bytes())
        out = build / f"run{i}.mem"
        out.unlink(missing_ok=True)
        run_specs.append({"name": r.name, "overlay": str(overlay), "out": str(out)})
    results_path = build / "results.json"
    results_path.unlink(missing_ok=True)
    spec = {"program": str(prog_path), "mem_size": int(mem_size), "latency": int(latency),
            "max_cycles": int(max_cycles), "period_ns": _PERIOD_NS, "runs": run_specs,
            "results": str(results_path)}
    spec_path = build / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))

    from hdl.rtl import TOP_MODULE
    failure: list[BaseException] = []

    def simulate() -> None:
        try:
            run_cocotb([top], TOP_MODULE, TB_MODULE, build / "sim", params={"spec": str(spec_path)})
        except BaseException as exc:  # re-raised in the calling thread
            failure.append(exc)

    worker = threading.Thread(target=simulate, name="cocotb", daemon=True)
    worker.start()
    out: list[RunResult] = []

    def collect() -> None:
        if not results_path.exists():
            return
        try:
            done = json.loads(results_path.read_text())
        except ValueError:           # caught mid-write; read it on the next poll
            return
        for rs, res in list(zip(run_specs, done))[len(out):]:
            if res["error"]:
                raise RuntimeError(f"run {res['name']}: the controller stopped on an unknown opcode")
            r = RunResult(res["name"], Path(rs["out"]).read_bytes(), int(res["cycles"]),
                          float(res["wall_s"]), int(res["mem_reads"]), int(res["mem_writes"]))
            out.append(r)
            if on_result is not None:
                on_result(r)

    while worker.is_alive():
        worker.join(timeout=0.5)
        collect()
    if failure:
        raise failure[0]
    collect()
    if len(out) != len(runs):
        raise RuntimeError(f"the simulation reported {len(out)} of {len(runs)} runs; see {build}")
    return out
