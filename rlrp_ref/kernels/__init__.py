"""The vectorized kernels that the layers and rules share, on NHWC arrays.

One module per concern:

- :mod:`~rlrp_ref.kernels.padding`: padding, cropping, window views, the index
  conventions (window offset ``(i, j)``, flat index ``k = i * kw + j``, output
  pixel ``(p, q)`` reads padded input pixel ``(p * sh + i, q * sw + j)``);
- :mod:`~rlrp_ref.kernels.threads`: the thread pool of the element-wise passes
  (:func:`parallel_rows`, :func:`elementwise`, :func:`channelwise`,
  :func:`set_num_threads`): NumPy's element-wise work is single-threaded while
  BLAS uses every core, so large passes run in bands that write disjoint
  outputs (the same bits for any thread count);
- :mod:`~rlrp_ref.kernels.reductions`: per-sample sums and L1 norms, alone or
  fused with a product (:func:`multiply_and_sum`) or a sum (:func:`add_and_sum`);
- :mod:`~rlrp_ref.kernels.scratch`: scratch buffers that live for one pass
  (:func:`workspace`);
- :mod:`~rlrp_ref.kernels.convolution`: im2col/col2im, the convolution routes
  and their vjps, and the choice of algorithm (:func:`conv_algorithm`, a
  context manager local to the calling thread);
- :mod:`~rlrp_ref.kernels.winograd`: Winograd F(2x2, 3x3) for 3x3 stride-1
  convolutions in float32;
- :mod:`~rlrp_ref.kernels.pooling`: max and average pooling and their vjps,
  with one first-maximum routine for the winners and the vjp;
- :mod:`~rlrp_ref.kernels.tuning`: every tuning constant, with the measurement
  that set it (none changes a result).

Backward maps accumulate over the ``kh * kw`` kernel offsets: a loop of at most
a few dozen vectorized operations, never a loop over pixels, channels or batch
items.
"""

from . import convolution, padding, pooling, reductions, scratch, threads, tuning, winograd
from .convolution import (
    ALGORITHMS,
    _gather_route,
    _winograd_applies,
    col2im,
    conv2d_forward,
    conv2d_vjp,
    conv_algorithm,
    current_conv_algorithm,
    im2col,
)
from .padding import Pads, as_pair, crop_nhwc, output_hw, pad_nhwc, padded_shape_of, resolve_padding, windows
from .pooling import (
    _blocked,
    avgpool_counts,
    avgpool_forward,
    avgpool_vjp,
    maxpool_forward,
    maxpool_vjp,
    maxpool_winner,
    scatter_windows,
)
from .reductions import add_and_sum, multiply_and_sum, per_sample_sum, per_sample_sums
from .scratch import _workspace, workspace
from .threads import channelwise, elementwise, num_threads, parallel_rows, set_num_threads
from .winograd import _WINOGRAD_FLIP, _winograd_fused, _winograd_layered, winograd_conv, winograd_fused_applies, winograd_kernel

__all__ = [
    "ALGORITHMS", "Pads", "add_and_sum", "as_pair", "avgpool_counts", "avgpool_forward", "avgpool_vjp",
    "channelwise", "col2im", "conv2d_forward", "conv2d_vjp", "conv_algorithm", "convolution", "crop_nhwc",
    "current_conv_algorithm", "elementwise", "im2col", "maxpool_forward", "maxpool_vjp", "maxpool_winner",
    "multiply_and_sum", "num_threads", "output_hw", "pad_nhwc", "padded_shape_of", "padding", "parallel_rows",
    "per_sample_sum", "per_sample_sums", "pooling", "reductions", "resolve_padding", "scatter_windows", "scratch",
    "set_num_threads", "threads", "tuning", "winograd", "winograd_conv", "winograd_fused_applies",
    "winograd_kernel", "windows", "workspace",
]


def __getattr__(name):
    """Names of the single-module kernels that moved: say where, instead of a bare AttributeError.

    The tuning constants are not copied here on purpose: setting a copy would change nothing.
    """
    if name in tuning.__dict__ and name.isupper():
        raise AttributeError(f"rlrp_ref.kernels.{name} is rlrp_ref.kernels.tuning.{name} (read and set it there)")
    if name == "CONV_ALGORITHM":
        raise AttributeError("rlrp_ref.kernels.CONV_ALGORITHM is gone: conv_algorithm(name) sets the algorithm for the "
                             "calling thread, current_conv_algorithm() reads it")
    raise AttributeError(f"module 'rlrp_ref.kernels' has no attribute {name!r}")
