"""``vit2hw eval --compare``: every calibration method at every standard width, one table.

Each (method, bits) pair is calibrated once on the same calibration images and
evaluated with :func:`vit2hw.pipeline.evaluate` on the same evaluation images; pairs a
method cannot do (e.g. ``mixed`` with a method that has one uniform width) are listed
as skipped with the reason. The table is written as Markdown and as JSON with the
same stem, each atomically.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from calib.methods import METHODS, validate_bits
from calib.plan import BitsError
from calib.report import bits_record

__all__ = ["COMPARE_BITS", "compare_methods", "format_markdown", "write_table"]

#: the widths every method is tried at
COMPARE_BITS = ("w8a8", "w6a6", "w4a8", "w4a4", "mixed")

_COLUMNS = [("method", "method", "{}"), ("bits", "bits", "{}"), ("fp_top1", "FP top-1", "{:.2f}"),
            ("fakequant_top1", "fake-quant top-1", "{:.2f}"), ("integer_top1", "integer top-1", "{:.2f}"),
            ("agreement", "agreement", "{:.3f}"), ("logit_cosine", "logit cosine", "{:.4f}"),
            ("avg_weight_bits", "avg W bits", "{:.2f}"), ("avg_act_bits", "avg A bits", "{:.2f}"),
            ("model_size_kib", "size KiB", "{:.1f}"), ("seconds", "time s", "{:.0f}")]


def _cell(row: dict, key: str, fmt: str) -> str:
    """A formatted value; "n/a" where the method has none (no integer graph: no integer top-1)."""
    v = row.get(key)
    return "n/a" if v is None else fmt.format(v)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compare_methods(model, spec, calib_images: np.ndarray, images: np.ndarray, labels: np.ndarray,
                    methods: Sequence[str] | None = None, bits: Sequence[str] = COMPARE_BITS,
                    act_observer: str = "minmax", attn: str = "auto", budget: float | None = None,
                    progress: bool = True, log: Callable[[str], None] = _log) -> list[dict]:
    """One row per (method, bits): metrics and bit record, or ``status: skipped`` and why."""
    from vit2hw.pipeline import evaluate, quantize_model

    methods = list(methods or METHODS)
    depth = len(model.blocks)
    rows = []
    pairs = [(m, b) for m in methods for b in bits]
    for n, (method, b) in enumerate(pairs, 1):
        row = {"method": method, "bits": b}
        opts = {"attn": attn}
        if b == "mixed" and budget is not None:
            opts["budget"] = budget
        try:
            validate_bits(b, depth, method, budget=opts.get("budget"))
        except BitsError as exc:
            row.update(status="skipped", reason=str(exc))
            log(f"[{n}/{len(pairs)}] {method} {b}: skipped ({exc})")
            rows.append(row)
            continue
        log(f"[{n}/{len(pairs)}] {method} {b}: calibrating and evaluating ...")
        t0 = time.time()
        result = quantize_model(model, spec, calib_images, b, method, act_observer, progress=progress, **opts)
        metrics = evaluate(model, spec, result, images, labels, progress=progress)
        rec = bits_record(result.plan, model, spec)
        row.update(status="ok", **metrics, **rec, model_size_kib=rec["model_size_bytes"] / 1024,
                   seconds=time.time() - t0, attn=sorted(set(result.plan.attn_modes.values())))
        log(f"[{n}/{len(pairs)}] {method} {b}: integer top-1 {_cell(row, 'integer_top1', '{:.2f}')} "
            f"(fake-quant {row['fakequant_top1']:.2f}, fp {row['fp_top1']:.2f}, "
            f"agreement {_cell(row, 'agreement', '{:.3f}')}, avg W bits {row['avg_weight_bits']:.2f}) "
            f"in {row['seconds']:.0f} s")
        rows.append(row)
    return rows


def format_markdown(rows: list[dict], meta: dict) -> str:
    """A Markdown table; skipped pairs in a list below it."""
    head = [f"# Calibration methods compared on {meta.get('model', '?')}", ""]
    head += [f"- {k}: {v}" for k, v in meta.items() if k != "model"]
    head += ["", "| " + " | ".join(c[1] for c in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    body, skipped = [], []
    for r in rows:
        if r.get("status") != "ok":
            skipped.append(f"- {r['method']} {r['bits']}: skipped — {r.get('reason', '')}")
            continue
        body.append("| " + " | ".join(_cell(r, k, fmt) for k, _, fmt in _COLUMNS) + " |")
    mixed = [r for r in rows if r.get("status") == "ok" and r["bits"] == "mixed"]
    tail = []
    for r in mixed:
        mb = r.get("module_bits", {})
        blocks = sorted({int(k.split(".")[1]) for k in mb})
        widths = ", ".join(f"{i}: {mb[f'blocks.{i}.attn']['w']}/{mb[f'blocks.{i}.mlp']['w']}" for i in blocks)
        tail.append(f"- {r['method']} --bits mixed, weight bits per block (MSA/MLP): {widths}")
    out = head + body
    if tail:
        out += ["", *tail]
    if skipped:
        out += ["", "Not run:", *skipped]
    return "\n".join(out) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path | str, rows: list[dict], meta: dict) -> tuple[Path, Path]:
    """Write ``path`` (Markdown) and the JSON beside it with the same stem."""
    from vit2hw.outputs import write_json

    md = Path(path)
    js = md.with_suffix(".json")
    if js == md:
        raise ValueError(f"--table {md} must not end in .json (the JSON is written beside it)")
    write_json(js, {"meta": meta, "rows": rows})
    _write_text_atomic(md, format_markdown(rows, meta))
    return md, js
