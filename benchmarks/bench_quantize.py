"""Benchmark: wall time and peak memory of ``vit2hw quantize`` on DeiT-Tiny (8 bits or mixed).

Runs the real command line as a child process (so the figure includes interpreter
start-up, torch import, checkpoint loading, image decoding, calibration, lowering and
writing the graph) and reads the child's own peak resident set size from
``os.wait4``'s resource usage. Uses the real weights and images of ``../shared``
when present, else the CLI's synthetic weights and images (printed as a notice).

Targets: under 60 s (``--bits 8``; 120 s for ``--bits mixed``, whose calibration adds the
nuclear-norm pass) and under 4 GiB. The script reports; it never fails on a target.

    python benchmarks/bench_quantize.py [--repeat 2] [--calib-images 32] [--attn auto] [--bits mixed]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "run_once", "SHARED", "TARGET_SECONDS", "TARGET_SECONDS_MIXED", "TARGET_BYTES"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.pth"
CALIB_DATA = SHARED / "data" / "imagenet-samples"
TARGET_SECONDS = 60.0
TARGET_SECONDS_MIXED = 120.0
TARGET_BYTES = 4 << 30


def quantize_command(out: Path, calib_images: int, attn: str, bits: str = "8") -> tuple[list[str], str]:
    """The child's argv and a one-line description of the inputs it uses."""
    cmd = [sys.executable, "-m", "vit2hw.cli", "quantize", "--model", "deit_tiny", "--bits", bits,
           "--out", str(out), "--quiet", "--calib-images", str(calib_images), "--attn", attn]
    if WEIGHTS.is_file() and CALIB_DATA.is_dir():
        cmd += ["--weights", str(WEIGHTS), "--calib-data", str(CALIB_DATA)]
        return cmd, f"real DeiT-Tiny weights and {calib_images} ImageNet images from {SHARED}"
    return cmd, "synthetic weights and images (../shared absent)"


def run_once(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in bytes, exit status)."""
    import subprocess

    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all runs)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs; the best wall time is reported")
    ap.add_argument("--calib-images", type=int, default=32, help="calibration images (CLI default 32)")
    ap.add_argument("--attn", default="auto", choices=("auto", "log2", "uniform"),
                    help="attention encoding passed to the CLI (default auto, as the CLI)")
    ap.add_argument("--bits", default="8", help="--bits passed to the CLI (default 8; e.g. mixed)")
    args = ap.parse_args(argv)
    target = TARGET_SECONDS_MIXED if args.bits.strip().lower() == "mixed" else TARGET_SECONDS

    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench_quantize_") as tmp:
        runs = []
        for i in range(max(1, args.repeat)):
            out = Path(tmp) / f"graph{i}"
            cmd, inputs = quantize_command(out, args.calib_images, args.attn, args.bits)
            if i == 0:
                print(f"inputs: {inputs}")
                if "synthetic" in inputs:
                    print("notice: synthetic weights/images: timing is representative, accuracy is not")
            load = os.getloadavg()[0]
            wall, rss, rc = run_once(cmd, Path(tmp) / f"log{i}.txt")
            runs.append((wall, rss, rc))
            print(f"run {i + 1}: {wall:7.1f} s  peak RSS {rss / 2**30:5.2f} GiB  exit {rc}  "
                  f"(load average before: {load:.2f})")
            if rc != 0:
                print((Path(tmp) / f"log{i}.txt").read_text(errors="replace")[-2000:])
        ok = [r for r in runs if r[2] == 0]
        if not ok:
            print("no successful run")
            return 0
        best = min(r[0] for r in ok)
        peak = max(r[1] for r in ok)
        print(f"best wall time : {best:7.1f} s    target < {target:.0f} s   "
              f"{'met' if best < target else 'NOT met'}")
        print(f"peak RSS (max) : {peak / 2**30:7.2f} GiB  target < {TARGET_BYTES / 2**30:.0f} GiB  "
              f"{'met' if peak < TARGET_BYTES else 'NOT met'}")
        print(f"load average   : {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min, after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
