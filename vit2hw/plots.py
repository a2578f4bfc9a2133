"""Report plots (PNG, matplotlib Agg), byte-reproducible: no timestamps or version metadata.

``write_plots(report, out_dir)`` writes ``cycles_by_unit.png`` (per node: each unit's busy
cycles side by side, the engines overlap, and the node's share of the total as a line),
``utilization.png`` (per GEMM node: ideal / array busy cycles)
and ``dram_traffic.png`` (bytes read and written per node).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_plots", "PNG_METADATA"]

#: PNG text chunks matplotlib would otherwise fill with its version (and nothing time-dependent)
PNG_METADATA = {"Software": None}
_COLORS = {"load": "#4c72b0", "store": "#8172b3", "array": "#dd8452", "vector": "#55a868", "control": "#999999"}


def _figure(n: int):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "vit2hw"
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * n + 2.0), 4.0), dpi=100)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    plt.close(fig)
    return path


def write_plots(report: dict, out_dir: Path | str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = [l for l in report["per_layer"] if l["cycles"] or any(l["by_unit"].values())]
    names = [l["node"] for l in layers]
    x = list(range(len(layers)))
    title = f"{report['model']} on {report['config']['name']}"
    paths = []

    plt, fig, ax = _figure(len(x))
    units = [u for u in _COLORS if any(l["by_unit"].get(u, 0) for l in layers)]
    width = 0.8 / max(1, len(units))
    for k, unit in enumerate(units):
        ax.bar([i - 0.4 + (k + 0.5) * width for i in x], [l["by_unit"][unit] for l in layers], width=width,
               color=_COLORS[unit], label=f"{unit} busy")
    ax.step(x, [l["cycles"] for l in layers], where="mid", color="k", linewidth=1, label="share of total")
    ax.set_title(f"{title}: busy cycles per node by unit (units overlap)")
    ax.set_ylabel("cycles")
    ax.set_xticks(x, names, rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    paths.append(_save(plt, fig, out / "cycles_by_unit.png"))

    gem = [l for l in layers if l["macs"]]
    plt, fig, ax = _figure(len(gem))
    ax.bar(range(len(gem)), [l["ideal_cycles"] / max(1, l["by_unit"]["array"]) for l in gem], color=_COLORS["array"])
    ax.axhline(report["utilization"], color="k", linestyle="--", linewidth=1,
               label=f"whole network {report['utilization']:.4f}")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{title}: GEMM array efficiency (ideal / array busy cycles)")
    ax.set_xticks(range(len(gem)), [l["node"] for l in gem], rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    paths.append(_save(plt, fig, out / "utilization.png"))

    plt, fig, ax = _figure(len(x))
    ax.bar(x, [l["dram_read_bytes"] for l in layers], color=_COLORS["load"], label="read", width=0.8)
    ax.bar(x, [l["dram_write_bytes"] for l in layers], bottom=[l["dram_read_bytes"] for l in layers],
           color=_COLORS["store"], label="write", width=0.8)
    ax.set_title(f"{title}: DRAM traffic per node")
    ax.set_ylabel("bytes")
    ax.set_xticks(x, names, rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    paths.append(_save(plt, fig, out / "dram_traffic.png"))
    return paths
