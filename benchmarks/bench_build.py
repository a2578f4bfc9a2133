"""Wall time of `vit2hw build --model deit_tiny --bits mixed` (no --synth), per step.

Target: under 120 s for the whole build. Uses the real DeiT-Tiny weights and ImageNet
samples when present (../shared), otherwise the synthetic initialisation. Prints the
step times and the report's headline numbers; ``--bits 8`` or ``--target zcu102`` are
passed through (``python benchmarks/bench_build.py --bits 8 --target zcu102``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "models" / "deit_tiny_patch16_224.pth"
SAMPLES = SHARED / "data" / "imagenet-samples"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="mixed")
    ap.add_argument("--target", default="default")
    ap.add_argument("--calib-images", type=int, default=32)
    args = ap.parse_args()
    from vit2hw.cli import main as cli_main
    steps: list[tuple[str, float]] = []
    last = [time.perf_counter(), "start"]

    real_print = print

    def stamp(msg: str) -> None:
        now = time.perf_counter()
        steps.append((last[1], now - last[0]))     # the interval belongs to the previous step
        last[0], last[1] = now, msg.split("]")[0].strip("[")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["build", "--model", "deit_tiny", "--bits", args.bits, "--target", args.target,
                "--calib-images", str(args.calib_images), "--quiet", "--out", str(Path(tmp) / "out")]
        if WEIGHTS.is_file() and SAMPLES.is_dir():
            argv += ["--weights", str(WEIGHTS), "--calib-data", str(SAMPLES)]
        import vit2hw.cli_build as cb
        orig = cb._progress
        cb._progress = lambda quiet: (lambda msg: (stamp(msg), real_print(msg, file=sys.stderr)))
        t0 = time.perf_counter()
        try:
            rc = cli_main(argv)
        finally:
            cb._progress = orig
        wall = time.perf_counter() - t0
        rep = (Path(tmp) / "out" / "report.json").read_text() if rc == 0 else "{}"
    import json
    r = json.loads(rep)
    print(f"vit2hw build --model deit_tiny --bits {args.bits} --target {args.target}: {wall:.1f} s wall (rc {rc})")
    steps.append((last[1], time.perf_counter() - last[0]))
    for name, dt in steps:
        print(f"  [{name}] {dt:.1f} s")
    print(f"  process CPU time {time.process_time():.1f} s (wall time on a loaded machine can be far longer)")
    if r:
        print(f"  total_cycles {r['total_cycles']}  ideal {r['ideal_cycles']}  utilization {r['utilization']:.4f}  "
              f"latency {r['latency_ms']:.3f} ms  fps {r['fps']:.1f}  "
              f"forwarding est. {r['estimates']['overlapped_forwarding']['latency_ms']:.3f} ms  "
              f"pipelined est. {r['estimates']['pipelined']['latency_ms']:.3f} ms")
    return rc


if __name__ == "__main__":
    sys.exit(main())
