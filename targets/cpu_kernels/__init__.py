"""mdoc's default CPU kernels: scheduled TVM PrimFuncs for conv, matmul, pooling and the rest."""

from .common import CpuSpec, Epilogue, Kernel, KernelError, Param, ensure_runtime_threads
from .conv import conv2d, pack_conv2d_weight, plan_conv2d
from .depthwise import depthwise_conv2d
from .matmul import batch_matmul, dense
from .pooling import global_avg_pool2d, pool2d
from .reductions import layer_norm, softmax
from .generic import schedule_generic
