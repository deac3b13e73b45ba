"""Every tile `mdoc tune` may try builds a kernel that computes what the builder's own tile does.

The sweep checks each candidate's output before timing it and skips a wrong one, so an
illegal tile would only waste trials; this test keeps the spaces honest.  A few tiles of
each space are built (the whole sweep is `mdoc tune`'s job).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue  # noqa: E402
from mdoc.targets.cpu_kernels.request import KernelRequest  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.tuning.tile_space import tile_space  # noqa: E402
from mdoc.targets.tuning.tile_sweep import _Bench, logical_inputs  # noqa: E402

SPEC = CpuSpec.from_target(resolve_target("x86").tvm)
RELU = Epilogue(bias=True, activation="relu")

REQUESTS = {
    "dense": KernelRequest.of("dense", (24, 64), (64, 80), transpose_b=False, epilogue=Epilogue()),
    "batch_matmul": KernelRequest.of("batch_matmul", (2, 20, 32), (2, 32, 40), transpose_b=False, epilogue=Epilogue()),
    "pointwise": KernelRequest.of("conv2d", (1, 32, 14, 14), (48, 32, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0),
                                  dilation=(1, 1), groups=1, epilogue=RELU),
    "conv3x3": KernelRequest.of("conv2d", (1, 16, 13, 13), (32, 16, 3, 3), strides=(2, 2), padding=(1, 1, 1, 1),
                                dilation=(1, 1), groups=1, epilogue=RELU),
    "nchwc": KernelRequest.of("conv2d", (1, 32, 10, 10), (32, 32, 3, 3), strides=(1, 1), padding=(1, 1, 1, 1),
                              dilation=(1, 1), groups=1, epilogue=RELU, layout="NCHWc", data_layout="NCHWc"),
    "depthwise": KernelRequest.of("conv2d", (1, 32, 15, 15), (32, 1, 3, 3), strides=(2, 2), padding=(1, 1, 1, 1),
                                  dilation=(1, 1), groups=32, epilogue=RELU),
    "depthwise_nchwc": KernelRequest.of("conv2d", (1, 32, 15, 15), (32, 1, 3, 3), strides=(1, 1), padding=(1, 1, 1, 1),
                                        dilation=(1, 1), groups=32, epilogue=RELU, layout="NCHWc"),
    "maxpool_nchwc": KernelRequest.of("pool2d", (1, 32, 17, 17), "max", (3, 3), (2, 2), (1, 1, 1, 1), dilation=(1, 1),
                                      ceil_mode=False, count_include_pad=False, layout="NCHWc"),
    "maxpool": KernelRequest.of("pool2d", (1, 16, 17, 17), "max", (3, 3), (2, 2), (1, 1, 1, 1), dilation=(1, 1),
                                ceil_mode=False, count_include_pad=False),
    # several packed parameters, each packed from its own logical shape (Kernel.logical_shapes)
    "inverted_residual": KernelRequest.of("inverted_residual", (1, 24, 16, 16), (64, 24, 1, 1), (64, 1, 3, 3),
                                          (24, 64, 1, 1), strides=(1, 1), padding=(1, 1, 1, 1),
                                          expand_strides=(1, 1), expand_padding=(0, 0, 0, 0),
                                          expand=Epilogue(activation="clip"), depthwise=Epilogue(activation="clip"),
                                          project=Epilogue(residual=True), data_layout="NCHWc"),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_tiles_compute_what_the_default_tile_does(name):
    request = REQUESTS[name]
    space = tile_space(request, SPEC)
    assert space and len(set(space)) == len(space)
    default = request.build(SPEC)
    logical = logical_inputs(default, request)
    expected = _Bench(default, SPEC, logical).output()
    for tile in space[:3]:
        got = _Bench(request.build(SPEC, tile), SPEC, logical).output()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name} tile {tile}")
