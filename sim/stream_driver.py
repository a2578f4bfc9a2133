"""cocotb helpers shared by the vector-unit testbenches.

A unit under test has ``clk``/``rst``, a ``start`` strobe with ``cfg__*`` inputs, a
``busy`` output, an input stream ``i__{valid,ready,payload}``, an output stream
``o__{valid,ready,payload}`` and constant write ports ``<name>__{en,addr,data}``.
:func:`run_operation` drives one operation cycle by cycle (optionally with random
stalls on both streams, keeping ``valid`` asserted until accepted, as the stream rules
require) and records on which cycle each handshake happened, so testbenches check both
the data and the cycle model. An optional ``probe`` runs in the read-only phase of every
output handshake, so white-box checks sample internal signals in step with the outputs
without a second per-cycle coroutine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

__all__ = ["OperationTrace", "reset_unit", "write_constants", "run_operation"]


@dataclass
class OperationTrace:
    """What one operation did: output words and handshake cycles (cycle 0 = ``start``)."""
    outputs: list[int] = field(default_factory=list)
    in_cycles: list[int] = field(default_factory=list)
    out_cycles: list[int] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        """First input handshake to last output handshake, both cycles counted."""
        return self.out_cycles[-1] - self.in_cycles[0] + 1


def _set(handle, value: int) -> None:
    handle.value = int(value) & ((1 << len(handle)) - 1)


async def reset_unit(dut, period_ns: int = 10) -> None:
    """Start the clock, zero every driven input and hold reset for two cycles."""
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


async def write_constants(dut, port: str, words: Iterable[tuple[int, int]]) -> None:
    """Write ``(addr, data)`` pairs through write port ``port``, one per cycle."""
    en = getattr(dut, f"{port}__en")
    addr = getattr(dut, f"{port}__addr")
    data = getattr(dut, f"{port}__data")
    for a, d in words:
        await FallingEdge(dut.clk)
        en.value = 1
        _set(addr, a)
        _set(data, d)
    await FallingEdge(dut.clk)
    en.value = 0


async def run_operation(dut, cfg: Mapping[str, int], beats: Sequence[int], n_out: int,
                        rng: random.Random | None = None, in_stall: float = 0.0,
                        out_stall: float = 0.0, max_cycles: int = 200_000,
                        probe: Callable[[int], None] | None = None) -> OperationTrace:
    """Strobe ``start`` with ``cfg``, feed ``beats`` and collect ``n_out`` output words.

    Returns after the last output; checks that ``busy`` is high while the operation
    runs and drops right after its last output is accepted. With ``rng`` the ``cfg``
    inputs hold random values after the ``start`` cycle, checking that the unit samples
    them on ``start`` as the protocol says. ``probe(k)`` is called in
    the read-only phase of the cycle in which output word ``k`` is accepted.
    """
    trace = OperationTrace()
    cycle = 0
    idx = 0
    offering = False
    while len(trace.outputs) < n_out:
        await FallingEdge(dut.clk)
        if cycle == 0:
            for name, value in cfg.items():
                _set(getattr(dut, f"cfg__{name}"), value)
        elif cycle == 1 and rng is not None:
            for name in cfg:
                handle = getattr(dut, f"cfg__{name}")
                _set(handle, rng.getrandbits(len(handle)))
        dut.start.value = 1 if cycle == 0 else 0
        if not offering and idx < len(beats):
            offering = rng is None or rng.random() >= in_stall
        dut.i__valid.value = int(offering)
        if offering:
            _set(dut.i__payload, beats[idx])
        take = rng is None or rng.random() >= out_stall
        dut.o__ready.value = int(take)
        await ReadOnly()
        if cycle > 0:
            assert int(dut.busy.value) == 1, f"busy low at cycle {cycle} before the last output"
        if offering and int(dut.i__ready.value):
            trace.in_cycles.append(cycle)
            idx += 1
            offering = False
        if take and int(dut.o__valid.value):
            if probe is not None:
                probe(len(trace.outputs))
            trace.outputs.append(dut.o__payload.value.to_unsigned())
            trace.out_cycles.append(cycle)
        cycle += 1
        if cycle > max_cycles:
            raise AssertionError(f"operation did not finish in {max_cycles} cycles "
                                 f"({idx}/{len(beats)} in, {len(trace.outputs)}/{n_out} out)")
    await FallingEdge(dut.clk)
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await ReadOnly()
    assert idx == len(beats), f"only {idx} of {len(beats)} input beats were accepted"
    assert int(dut.busy.value) == 0, "busy still high after the last output"
    assert int(dut.o__valid.value) == 0, "extra output beat after the last one"
    return trace
