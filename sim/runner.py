"""Launch cocotb testbenches on generated Verilog with Icarus, from pytest or the CLI.

Testbench modules live in ``sim/`` (``sim.tb_<unit>``); parameters reach them as JSON
in the ``VIT2HW_TB_PARAMS`` environment variable (read back with :func:`tb_params`),
so one testbench serves every array shape or bit width a test asks for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["SimulatorMissingError", "SimulationFailed", "SimResult", "require_icarus",
           "run_cocotb", "tb_params", "PARAMS_ENV"]

PARAMS_ENV = "VIT2HW_TB_PARAMS"
TIMESCALE = ("1ns", "1ps")


class SimulatorMissingError(RuntimeError):
    """Icarus Verilog is not installed."""


class SimulationFailed(AssertionError):
    """A cocotb test failed or the simulator terminated abnormally."""


@dataclass(frozen=True)
class SimResult:
    tests: int
    failed: int
    results_xml: Path


def require_icarus() -> None:
    """Raise :class:`SimulatorMissingError` with the install command if iverilog is absent."""
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulatorMissingError(
            "Icarus Verilog not found: install it with `apt-get update && apt-get install -y iverilog`"
        )


def run_cocotb(sources: Sequence[Path], toplevel: str, test_module: str, build_dir: Path,
               params: Mapping[str, Any] | None = None, testcase: str | None = None,
               waves: bool = False) -> SimResult:
    """Compile ``sources`` with Icarus and run cocotb module ``test_module`` on ``toplevel``.

    Raises :class:`SimulationFailed` if any cocotb test fails, so a pytest test that calls
    this fails too. ``build_dir`` must be unique per concurrent run.
    """
    require_icarus()
    from cocotb_tools.runner import get_results, get_runner

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("icarus")
    runner.build(sources=[Path(s).resolve() for s in sources], hdl_toplevel=toplevel,
                 build_dir=build_dir, always=True, timescale=TIMESCALE, waves=waves)
    env = {PARAMS_ENV: json.dumps(dict(params or {}), sort_keys=True)}
    # keep the repo importable for the test module even when run from an installed tree
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    results = build_dir / f"results_{test_module.replace('.', '_')}.xml"
    try:
        path = runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir,
                           test_dir=build_dir, extra_env=env, testcase=testcase,
                           timescale=TIMESCALE, results_xml=str(results), waves=waves)
    except SystemExit as exc:  # the runner exits under pytest when tests fail
        raise SimulationFailed(f"cocotb run of {test_module} on {toplevel} failed "
                               f"(exit {exc.code}); see {build_dir}") from None
    try:
        tests, failed = get_results(Path(path))
    except RuntimeError as exc:
        raise SimulationFailed(str(exc)) from None
    if failed or tests == 0:
        raise SimulationFailed(f"{failed} of {tests} cocotb tests failed in {test_module}; see {build_dir}")
    return SimResult(tests, failed, Path(path))


def tb_params() -> dict[str, Any]:
    """Inside a testbench: the parameters the launching test passed to :func:`run_cocotb`."""
    return json.loads(os.environ.get(PARAMS_ENV, "{}"))
