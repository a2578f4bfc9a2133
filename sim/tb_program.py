"""cocotb testbench behind :func:`sim.run_program.run_program`: one program, several memory images.

Parameters (``sim.runner.tb_params()``): ``spec``, the path of a JSON file written by the
driver into the build directory::

    {"program": "<program.bin>", "mem_size": int, "latency": int, "max_cycles": int,
     "period_ns": int, "runs": [{"name": str, "overlay": "<run.bin>", "out": "<mem.bin>"}],
     "results": "<results.json>"}

For every run: reset the accelerator, fill :class:`sim.memory.MemoryModel` with the program's
image and then the run's overlay segments (``Program.to_bytes`` containers holding only
segments, e.g. one input image), pulse ``start``, wait for ``done``, and write the whole final
memory to ``out``. ``results.json`` records per run the ``cycles`` counter, the cycles measured
by the bench itself (simulated time from the ``start`` edge to the ``done`` edge, divided by the
clock period) and the controller's ``error`` flag. The bench fails if a run does not finish
within ``max_cycles`` or its two cycle counts disagree; comparing outputs and cycles with the
reference is the caller's job.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Edge, ReadOnly, RisingEdge, SimTimeoutError, with_timeout
from cocotb.utils import get_sim_time

from sim.memory import MemoryModel
from sim.runner import tb_params
from vit2hw.isa import Program


class IdleSkippingMemory(MemoryModel):
    """:class:`MemoryModel` (always ready) that sleeps while the bus is idle.

    The base model wakes Python on every clock edge; during GEMMs and vector operations
    nothing is on the bus, so this one waits for ``req_valid`` to rise instead. Cycle numbers
    come from simulated time, so responses still arrive exactly ``latency`` cycles after
    their request, as in the base model.
    """

    def __init__(self, dut, size: int, latency: int, period_ns: int, prefix: str = "mem__",
                 data: bytearray | None = None):
        super().__init__(dut, size, latency=latency, prefix=prefix, data=data)
        self.period = period_ns

    def _cycle(self) -> int:
        return round(get_sim_time("ns") / self.period)

    def _accept(self, pending) -> None:
        p = self.p
        addr = int(p["req_addr"].value)
        if int(p["req_we"].value):
            self.writes += 1
            wdata, strb = int(p["req_wdata"].value), int(p["req_wstrb"].value)
            self._word(addr)
            for b in range(self.bus_bytes):
                if strb >> b & 1:
                    self.data[addr + b] = (wdata >> (8 * b)) & 0xFF
        else:
            self.reads += 1
            pending.append((self._cycle() + self.latency, self._word(addr)))

    async def run(self) -> None:
        p, clk = self.p, self.dut.clk
        pending: deque[tuple[int, int]] = deque()
        p["req_ready"].value = 1
        p["resp_valid"].value = 0
        resp_high = False
        while True:
            await RisingEdge(clk)
            if pending and pending[0][0] <= self._cycle():
                _, word = pending.popleft()
                p["resp_valid"].value = 1
                p["resp_rdata"].value = word
                resp_high = True
            elif resp_high:
                p["resp_valid"].value = 0
                resp_high = False
            await ReadOnly()
            if int(p["req_valid"].value):
                self._accept(pending)
            elif not pending and not resp_high:
                while True:                      # idle: sleep until a request appears
                    await Edge(p["req_valid"])
                    await ReadOnly()
                    if int(p["req_valid"].value):
                        break
                self._accept(pending)


async def _run_one(dut, spec: dict, run: dict, base: bytes) -> dict:
    period = spec["period_ns"]
    mem = IdleSkippingMemory(dut, spec["mem_size"], spec["latency"], period)
    mem.data[:len(base)] = base
    mem.load_segments(Program.from_bytes(Path(run["overlay"]).read_bytes()).segments)
    imem = IdleSkippingMemory(dut, spec["mem_size"], spec["latency"], period, prefix="imem__", data=mem.data)
    wmem = IdleSkippingMemory(dut, spec["mem_size"], spec["latency"], period, prefix="wmem__", data=mem.data)
    dut.rst.value = 1
    dut.start.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    servers = [cocotb.start_soon(x.run()) for x in (mem, imem, wmem)]
    await RisingEdge(dut.clk)
    dut.prog_addr.value = spec["entry"]
    dut.start.value = 1
    await RisingEdge(dut.clk)             # the start cycle: the counter runs from the next one
    t_start = get_sim_time("ns")
    dut.start.value = 0
    wall = time.perf_counter()
    try:
        await with_timeout(RisingEdge(dut.done), spec["max_cycles"] * period, "ns")
    except SimTimeoutError:
        raise AssertionError(f"{run['name']}: no done within {spec['max_cycles']} cycles") from None
    wall = time.perf_counter() - wall
    measured = round((get_sim_time("ns") - t_start) / period)
    await RisingEdge(dut.clk)             # let `cycles` settle past the edge that raised done
    for s in servers:
        s.cancel()
    counter = int(dut.cycles.value)
    error = bool(int(dut.error.value))
    Path(run["out"]).write_bytes(bytes(mem.data))
    reads = mem.reads + wmem.reads + imem.reads       # all three ports
    dut._log.info("%s: %d cycles in %.1f s (%.0f cycles/s), %d reads, %d writes%s", run["name"], counter,
                  wall, counter / max(wall, 1e-9), reads, mem.writes, " ERROR" if error else "")
    assert measured == counter, (f"{run['name']}: the cycles counter says {counter}, the bench measured "
                                 f"{measured} cycles from start to done")
    return {"name": run["name"], "cycles": counter, "measured_cycles": measured, "error": error,
            "wall_s": wall, "mem_reads": reads, "mem_writes": mem.writes}


@cocotb.test()
async def run_program_images(dut):
    """Runs the program once per memory image, recording final memory and cycles of each."""
    spec = json.loads(Path(tb_params()["spec"]).read_text())
    cocotb.start_soon(Clock(dut.clk, spec["period_ns"], unit="ns").start())
    prog = Program.from_bytes(Path(spec["program"]).read_bytes())
    base = bytearray(spec["mem_size"])
    for seg in prog.image():
        base[seg.addr:seg.addr + len(seg.data)] = seg.data
    spec["entry"] = prog.entry
    results = []
    for run in spec["runs"]:
        results.append(await _run_one(dut, spec, run, bytes(base)))
        # written after every run so that a later failure keeps the earlier results
        Path(spec["results"]).write_text(json.dumps(results, indent=1))
