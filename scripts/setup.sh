#!/usr/bin/env bash
# Set up vit2hw on a fresh Debian/Ubuntu machine: system simulators, a virtualenv in .venv,
# and the package with its pinned, tested dependency versions (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iverilog >/dev/null 2>&1 || need_apt+=(iverilog)
command -v verilator >/dev/null 2>&1 || need_apt+=(verilator)
# Verilator compiles the generated C++ with the system compiler (vit2hw sim --simulator verilator)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing ${need_apt[*]} (apt)"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU build; the constraints file keeps pip from resolving anything newer
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,synth]"
echo "setup: done ($(.venv/bin/python -c 'import vit2hw, torch, amaranth, cocotb; print("torch", torch.__version__, "amaranth", amaranth.__version__, "cocotb", cocotb.__version__)'))"
