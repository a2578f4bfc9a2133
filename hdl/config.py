"""Accelerator configuration: the one object that drives the generators and the scheduler.

:class:`AcceleratorConfig` is frozen, validated on construction (``ValueError`` naming the
offending field) and JSON round-trips through :meth:`~AcceleratorConfig.to_dict` /
:meth:`~AcceleratorConfig.from_dict` / :meth:`~AcceleratorConfig.save` /
:meth:`~AcceleratorConfig.load`. :class:`Device` records an FPGA's capacities so a
configuration can be checked against (and reported relative to) its target.

Presets (``get_preset``):

``default``
    16 x 16 array at 100 MHz, for simulation and tests (its 288 DSPs exceed the
    xc7z020, so its nominal target is the xczu9eg).
``pynq-z2`` (xc7z020)
    12 x 12 array at 100 MHz, 32-bit bus, 4 vector lanes: 144 PE DSP slices + 24 for the
    requantizer multipliers (two per column) + ~10 per lane (measured on the whole default
    accelerator) = 95 % of the 220 DSPs; block RAM 89 %. 12 divides 192, 576 and 768 channels and tiles
    197 tokens at 97 %.
``zcu102`` (xczu9eg)
    40 x 48 array at 250 MHz, 128-bit bus, 16 vector lanes, PEs without int4 packing: each
    PE's multiply and accumulate sit in one DSP slice (~77 LUTs per PE with the requantizer
    instead of ~190, docs/hw/array.md §7), so the part holds twice the PEs of the packing
    array (20 x 48, LUT-bound at 87 %). DSPs 87 % (1 920 PEs + 96 requantizer + ~10 per
    lane), LUTs 75 %, block RAM 55 % (O and V are stored once per read port: 2 and 3
    copies). The compiler emits no packed GEMMs today (it keeps 4-bit codes one per lane),
    so dropping the mode costs no cycles. 48 divides 192, 576, 768 and 3072 channels;
    197 tokens tile onto 5 x 40 = 200 rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Device", "DEVICES", "AcceleratorConfig", "PRESETS", "get_preset", "parse_array",
           "CONFIG_VERSION"]

CONFIG_VERSION = 1
BRAM36_BYTES = 4608  # 36 Kib


@dataclass(frozen=True)
class Device:
    """An FPGA part and the capacities resource reports compare against."""
    name: str
    part: str
    family: str  # yosys synth_xilinx -family
    dsp: int
    lut: int
    ff: int
    bram36: int

    @property
    def bram_bytes(self) -> int:
        return self.bram36 * BRAM36_BYTES


DEVICES: dict[str, Device] = {
    "xc7z020": Device("xc7z020", "xc7z020clg400-1", "xc7", dsp=220, lut=53200, ff=106400, bram36=140),
    "xczu9eg": Device("xczu9eg", "xczu9eg-ffvb1156-2-e", "xcup", dsp=2520, lut=274080, ff=548160,
                      bram36=912),
}


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one accelerator instance (array, vector units, buffers, memory, clock).

    Buffer sizes are in bytes; the words and depths the hardware uses follow from the
    array shape (see the ``*_width_bits`` / ``*_depth`` properties).
    """
    name: str = "default"
    rows: int = 16
    cols: int = 16
    operand_bits: int = 8           # lane width; 4-bit operands pack two per lane
    acc_bits: int = 32
    dataflow: str = "output_stationary"
    vector_lanes: int = 16
    act_buf_bytes: int = 128 * 1024
    weight_buf_bytes: int = 128 * 1024
    out_buf_bytes: int = 64 * 1024
    mem_bus_bits: int = 64
    clock_mhz: float = 100.0
    device: str = "xczu9eg"
    max_tokens: int = 256           # longest row the softmax unit handles
    max_channels: int = 768         # widest row the LayerNorm unit handles
    tag_bits: int = 8
    #: PEs with the packed two-int4 mode (fabric MAC), or without it: each PE's multiply and
    #: accumulate in one DSP slice, ~6x fewer LUTs (hdl.pe, docs/hw/array.md §7)
    int4_packing: bool = True
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AcceleratorConfig.{name} must be a positive integer, got {v!r}")
        for name in ("rows", "cols", "vector_lanes", "act_buf_bytes", "weight_buf_bytes",
                     "out_buf_bytes", "max_tokens", "max_channels", "tag_bits"):
            positive(name)
        if not isinstance(self.int4_packing, bool):
            raise ValueError(f"AcceleratorConfig.int4_packing must be true or false, got {self.int4_packing!r}")
        if self.version != CONFIG_VERSION:
            raise ValueError(f"AcceleratorConfig.version {self.version} unsupported (expected {CONFIG_VERSION})")
        if self.operand_bits != 8:
            raise ValueError(f"AcceleratorConfig.operand_bits must be 8 (int8 lanes, two int4 packed), "
                             f"got {self.operand_bits}")
        if not 24 <= self.acc_bits <= 32:
            raise ValueError(f"AcceleratorConfig.acc_bits must be 24..32, got {self.acc_bits}")
        if self.dataflow != "output_stationary":
            raise ValueError(f"AcceleratorConfig.dataflow {self.dataflow!r} unsupported; "
                             "the array is 'output_stationary'")
        if self.vector_lanes & (self.vector_lanes - 1):
            raise ValueError(f"AcceleratorConfig.vector_lanes must be a power of two, got {self.vector_lanes}")
        if self.mem_bus_bits not in (32, 64, 128, 256, 512):
            raise ValueError(f"AcceleratorConfig.mem_bus_bits must be one of 32/64/128/256/512, "
                             f"got {self.mem_bus_bits}")
        if not (isinstance(self.clock_mhz, (int, float)) and 1 <= self.clock_mhz <= 1000):
            raise ValueError(f"AcceleratorConfig.clock_mhz must be in 1..1000, got {self.clock_mhz!r}")
        if self.device not in DEVICES:
            raise ValueError(f"AcceleratorConfig.device {self.device!r} unknown; one of {sorted(DEVICES)}")
        for name, width in (("act_buf_bytes", self.act_word_bytes), ("weight_buf_bytes", self.weight_word_bytes),
                            ("out_buf_bytes", self.out_word_bytes)):
            if getattr(self, name) % width:
                raise ValueError(f"AcceleratorConfig.{name}={getattr(self, name)} is not a whole number "
                                 f"of {width}-byte words")
        total = self.act_buf_bytes + self.weight_buf_bytes + self.out_buf_bytes
        cap = DEVICES[self.device].bram_bytes
        if total > cap:
            raise ValueError(f"AcceleratorConfig buffers total {total} bytes exceed {self.device}'s "
                             f"{cap} bytes of block RAM")

    # ------------------------------------------------------------ derived quantities
    @property
    def target(self) -> Device:
        return DEVICES[self.device]

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def act_word_bytes(self) -> int:
        """One A column (one operand per array row) per read."""
        return self.rows * self.operand_bits // 8

    @property
    def weight_word_bytes(self) -> int:
        """One B row (one operand per array column) per read."""
        return self.cols * self.operand_bits // 8

    @property
    def out_word_bytes(self) -> int:
        """One drained row of 32-bit lanes per write."""
        return self.cols * 4

    @property
    def act_buf_depth(self) -> int:
        return self.act_buf_bytes // self.act_word_bytes

    @property
    def weight_buf_depth(self) -> int:
        return self.weight_buf_bytes // self.weight_word_bytes

    @property
    def out_buf_depth(self) -> int:
        return self.out_buf_bytes // self.out_word_bytes

    @property
    def peak_macs_per_cycle(self) -> int:
        """Int8 MACs per cycle (packed int4 mode, where built, doubles it)."""
        return self.pes

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AcceleratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"AcceleratorConfig: unknown fields {sorted(unknown)}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AcceleratorConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_array(self, rows: int, cols: int) -> "AcceleratorConfig":
        """A copy with another array shape (buffers rounded up to whole words)."""
        d = self.to_dict()
        d.update(rows=rows, cols=cols, name=f"{self.name}-{rows}x{cols}")
        for key, word in (("act_buf_bytes", rows), ("weight_buf_bytes", cols), ("out_buf_bytes", 4 * cols)):
            d[key] = -(-d[key] // word) * word
        return AcceleratorConfig.from_dict(d)


PRESETS: dict[str, AcceleratorConfig] = {
    "default": AcceleratorConfig(),
    "pynq-z2": AcceleratorConfig(
        name="pynq-z2", rows=12, cols=12, vector_lanes=4,
        # 3 Ki A lines and 2 Ki B lines of 4 bytes per bank, 1 Ki int32 output rows: with the
        # read-port copies of O and V, 89 % of the part's block RAM
        act_buf_bytes=3072 * 4 * 12, weight_buf_bytes=2048 * 4 * 12, out_buf_bytes=1024 * 48,
        mem_bus_bits=32, clock_mhz=100.0, device="xc7z020"),
    "zcu102": AcceleratorConfig(
        name="zcu102", rows=40, cols=48, vector_lanes=16, int4_packing=False,
        # 512 A and B lines of 16 bytes per bank (a DeiT-Tiny layer's input rows and whole
        # weight fit half of them), 1 280 int32 output rows: 55 % of the block RAM with the
        # read-port copies of O and V
        act_buf_bytes=512 * 16 * 40, weight_buf_bytes=512 * 16 * 48, out_buf_bytes=1280 * 192,
        mem_bus_bits=128, clock_mhz=250.0, device="xczu9eg", max_channels=1024),
}


def get_preset(name: str) -> AcceleratorConfig:
    """The named preset; ``ValueError`` listing the presets for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown accelerator preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None


def parse_array(text: str) -> tuple[int, int]:
    """``"RxC"`` (e.g. ``"16x16"``, ``"32X48"``) → ``(rows, cols)``."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"array shape {text!r} is not of the form RxC (e.g. 16x16)")
    rows, cols = (int(p) for p in parts)
    if rows < 1 or cols < 1:
        raise ValueError(f"array shape {text!r} must have positive rows and columns")
    return rows, cols
