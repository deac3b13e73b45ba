"""A request for one hand-scheduled kernel: the builder and its arguments, without the tile.

Why: tuning replays a request with other register tiles (`targets/tuning/tile_space.py`, `tile_sweep.py`), and a
later build must find the tile chosen for *this* kernel again, in another process.  A
request holds only hashable, printable values (shapes, attributes, the `Epilogue`; weights
by shape, never by value), so `key`, the request as text, is that identity; the tuning
database stores tiles under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import CpuSpec, Kernel, KernelError
from .conv import conv2d
from .int8 import qconv2d, qdense
from .int8_depthwise import qdepthwise_conv2d
from .inverted_residual import inverted_residual
from .layout import from_nchwc, to_nchwc
from .matmul import batch_matmul, dense
from .pooling import global_avg_pool2d, pool2d
from .reductions import layer_norm, softmax

__all__ = ["BUILDERS", "KernelRequest"]

BUILDERS = {"conv2d": conv2d, "qdepthwise_conv2d": qdepthwise_conv2d, "dense": dense, "batch_matmul": batch_matmul, "pool2d": pool2d,
            "softmax": softmax, "layer_norm": layer_norm, "to_nchwc": to_nchwc, "from_nchwc": from_nchwc,
            "inverted_residual": inverted_residual, "global_avg_pool2d": global_avg_pool2d, "qconv2d": qconv2d,
            "qdense": qdense}


@dataclass(frozen=True)
class KernelRequest:
    builder: str  # a key of BUILDERS
    args: tuple
    kwargs: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, builder: str, *args, **kwargs) -> "KernelRequest":
        if builder not in BUILDERS:
            raise KernelError(f"no kernel builder {builder!r}; builders are {', '.join(sorted(BUILDERS))}")
        return cls(builder, tuple(args), tuple(sorted(kwargs.items())))

    @property
    def key(self) -> str:
        return f"{self.builder}{self.args!r}{dict(self.kwargs)!r}"

    def build(self, spec: CpuSpec, tile: tuple[int, ...] | None = None) -> Kernel:
        """The kernel, with the builder's own tile choice or `tile` instead."""
        kwargs = dict(self.kwargs)
        if tile is not None:
            kwargs["tile"] = tuple(int(t) for t in tile)
        return BUILDERS[self.builder](*self.args, spec=spec, **kwargs)
