"""mdoc's default CPU kernels: scheduled TVM PrimFuncs for conv, matmul, pooling and the rest.

Why: TVM 0.27's default CPU build is scalar, single-threaded code (~100x slower than
onnxruntime), and tuning takes minutes per layer.  These builders write the schedules that
reach onnxruntime's speed without any search for any
static shape, so that tuning only refines.

Every builder takes static shapes, the ONNX-style attributes, an optional fused `Epilogue`
and the target's `CpuSpec` (`targets/cpu_description.py`: ISA, vector lanes, vector registers,
cores, TVM target; none given: this host) and returns a `Kernel`:

    kernel.func     scheduled tvm.tirx.PrimFunc, destination-passing: f(*inputs, out)
    kernel.params   ordered Params (name, shape, dtype, value); the last one is the output;
                    value is the packed constant for weights packed at compile time
    kernel.packers  for weights given only by shape: name -> numpy packing function
    kernel.flops, kernel.notes (tiling), kernel.compile(target) for standalone runs

The Relax lowering plugs one in with

    gv = bb.add_func(kernel.func, kernel.name)
    args = [graph_value(p) if p.value is None else relax.const(p.value) for p in kernel.inputs]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType(kernel.output.shape, "float32")))

The PrimFuncs carry `mdoc.scheduled` / `tir.is_scheduled` (the generic schedule leaves them
alone) and no `global_symbol` (Relax names them after the GlobalVar).  Activations are
NCHW, or with `layout="NCHWc"` (conv2d, depthwise, pool2d, global_avg_pool2d) blocked by the
vector width (`common.blocked_shape`; `layout.py` converts), which the lowering uses for
chains of convs (`targets/relax/layout_plan.py`); weights are packed into each kernel's own
layout.

Builders (float32):
    conv2d(data_shape, weight, strides, padding, dilation, groups, epilogue)   conv.py
    depthwise_conv2d(...)                                                     depthwise.py
    winograd_conv2d(data_shape, weight, padding, epilogue, tile): 3x3 stride 1, NCHWc  winograd.py
    inverted_residual(data_shape, expand, depthwise, project shapes, ...): a conv, a depthwise
        conv and a 1x1 conv in one kernel, per band of rows (MobileNetV2's blocks)  inverted_residual.py
    dense(a_shape, weight, transpose_b, epilogue); batch_matmul(a_shape, b_shape, ...)  matmul.py
    matmul_nbits(m, k, n, bits, block_size, zero_points, scale_dtype): float32 activations times
        packed int4 / int8 weights dequantized in registers (pack_weights packs them)  matmul_nbits.py
    pool2d(data_shape, "max" | "avg", kernel, strides, padding, ...); global_avg_pool2d   pooling.py
    softmax(shape); layer_norm(shape, epsilon)                                reductions.py

Integer builders (u8 / s8 x s8 -> s32 on the CPU's dot product, requantized in the tile):
    qdense(a_shape, weight_shape, epilogue); qconv2d(data_shape, weight_shape, ...)  int8.py
    qdepthwise_conv2d(data_shape, weight_shape, ...): depthwise, bytes widened to int32 vectors  int8_depthwise.py

`ensure_runtime_threads(cores)` before running anything: TVM's runtime assumes x86 cores
are hyper-threads and halves the thread count (one thread on a 2-core VM).
"""

from .common import CpuSpec, Epilogue, Kernel, KernelError, Param, ensure_runtime_threads
from .conv import Conv2dPlan, conv2d, pack_conv2d_weight, plan_conv2d
from .depthwise import depthwise_conv2d, pack_depthwise_weight
from .matmul import batch_matmul, dense, pack_dense_weight
from .pooling import global_avg_pool2d, pool2d
from .reductions import layer_norm, softmax
from .winograd import winograd_conv2d

__all__ = [
    "Conv2dPlan",
    "CpuSpec",
    "Epilogue",
    "Kernel",
    "KernelError",
    "Param",
    "batch_matmul",
    "conv2d",
    "dense",
    "depthwise_conv2d",
    "ensure_runtime_threads",
    "global_avg_pool2d",
    "layer_norm",
    "pack_conv2d_weight",
    "pack_dense_weight",
    "pack_depthwise_weight",
    "plan_conv2d",
    "pool2d",
    "softmax",
    "winograd_conv2d",
]
