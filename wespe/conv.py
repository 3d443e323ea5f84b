"""2-D convolution (NHWC / HWIO, SAME padding) whose kernel gradient is fast on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as one convolution whose window is the whole image (the
batch and pixels are the contraction), and Eigen runs that shape at 5-7 GFLOP/s on the 2-core test machine:
~1 s for one 3x3 64->64 layer at batch 8 of 100x100, 10x its forward pass. That alone made the WESPE step
~2.4x slower than PyTorch's (``launch/benchmark.py --mode=torch_ratio``). The same gradient written as a loop
over bands of output rows, each band an im2col patch matrix small enough to stay in cache times the output
gradient (``dk = patches^T @ g``), runs at the forward's speed (80 GFLOP/s; 12x faster for that layer).

Only the kernel gradient changes, and only on CPU (``jax.lax.platform_dependent``): GPUs and TPUs keep XLA's
own (cuDNN / the TPU convolution emitter). The forward pass and the input gradient are XLA's everywhere.
Results equal XLA's up to float summation order (tested against a float64 NumPy convolution).

The band loop sums over the batch inside each iteration, so a program partitioned over several devices would
all-reduce once per band (and with many forced CPU devices on few cores the rendezvous can time out): code that
traces a multi-device program wraps it in ``with kernel_gradient("xla"):`` (``train.make_train_step`` does).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from absl import logging

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Bytes of one band's patch matrix: small enough to stay in a core's L2/L3 while it is multiplied (measured:
# 2-4 MiB bands run 3-4x faster than one whole-image patch matrix, 16 MiB bands 2x slower than 2 MiB).
BAND_BYTES = 2 * 2**20
# Above this many patch columns (kernel height x width x input channels) per output channel XLA's own kernel
# gradient is faster: a tall patch matrix against a few output channels is bound by memory, not arithmetic
# (measured for the generators' 9x9 64->3 output layer).
MAX_COLUMNS_PER_OUTPUT = 256
# Below this many multiply-adds a kernel gradient is cheap whatever its form, and XLA's compiles faster than the
# band loop (small test networks compile many steps).
MIN_BANDED_MACS = 2**27
KERNEL_GRADIENTS = ("banded", "xla")
# XLA:CPU options for the training step. By default XLA:CPU hands f32 convolutions to YNNPACK, which ran the
# generators' 3x3 64->64 layers (most of the step's FLOPs) at 90-110 GFLOP/s on the 2-core AVX2 test machine,
# while XLA's Eigen convolution runs them at ~160 (oneDNN in PyTorch: ~195); Eigen is ~3x slower only on the
# few layers with 3 output channels (the generators' 9x9 output layer, some input gradients). Keeping YNNPACK
# for dots only measured 4-5% faster over the whole batch-8 step, in two alternating rounds
# (``launch/benchmark.py``). Results equal YNNPACK's up to float summation order.
TRAIN_STEP_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_KERNEL_GRADIENT = contextvars.ContextVar("wespe_conv_kernel_gradient", default="banded")


@contextlib.contextmanager
def kernel_gradient(mode: str):
    """Within this block, :func:`conv2d` kernel gradients traced on CPU use ``mode``: ``banded`` (the default:
    the fast band loop) or ``xla`` (XLA's own, e.g. for programs partitioned over several devices). It acts when
    the gradient is traced, so put it around the code that traces (inside the jitted function)."""
    if mode not in KERNEL_GRADIENTS:
        raise ValueError(f"unknown kernel gradient {mode!r}; expected one of {KERNEL_GRADIENTS}")
    token = _KERNEL_GRADIENT.set(mode)
    try:
        yield
    finally:
        _KERNEL_GRADIENT.reset(token)


@functools.cache
def train_step_compiler_options(platform: str) -> dict:
    """``jax.jit`` compiler options for a training step compiled for ``platform``: :data:`TRAIN_STEP_CPU_OPTIONS`
    on CPU where this XLA knows them (an XLA that does not rejects them: checked once on a tiny program and
    logged), none elsewhere."""
    if platform != "cpu":
        return {}
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=TRAIN_STEP_CPU_OPTIONS)
        probe.lower(jnp.zeros((), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError as error:
        logging.warning("this XLA does not take the training step's CPU options %s (%s); compiling with its "
                        "defaults", TRAIN_STEP_CPU_OPTIONS, str(error).splitlines()[0])
        return {}
    return dict(TRAIN_STEP_CPU_OPTIONS)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME")`` for NHWC images and HWIO
    kernels, with a kernel gradient that is fast on CPU (see the module docstring)."""
    return _conv2d(x, kernel, stride)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, kernel, stride):
    return _xla_conv(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return _xla_conv(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride), x)
    (dx,) = input_vjp(g)
    kh, kw, cin, cout = kernel.shape
    macs = math.prod(g.shape) * kh * kw * cin
    if (_KERNEL_GRADIENT.get() == "xla" or kh * kw * cin > MAX_COLUMNS_PER_OUTPUT * cout
            or macs < MIN_BANDED_MACS):
        dk = xla_kernel_grad(x, g, kernel.shape, stride)
    else:
        dk = jax.lax.platform_dependent(  # both branches must give the same dtype
            x, g, cpu=lambda x_, g_: banded_kernel_grad(x_, g_, kernel.shape, stride).astype(x.dtype),
            default=lambda x_, g_: xla_kernel_grad(x_, g_, kernel.shape, stride).astype(x.dtype))
    return dx, dk.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def xla_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], stride: int) -> jax.Array:
    """XLA's own kernel gradient of :func:`conv2d` (the transpose of the convolution in its kernel)."""
    _, kernel_vjp = jax.vjp(lambda k: _xla_conv(x, k, stride), jnp.zeros(kernel_shape, x.dtype))
    return kernel_vjp(g)[0]


def banded_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                       band_bytes: int = BAND_BYTES) -> jax.Array:
    """The kernel gradient ``dk[i, j, c, d] = sum_{n, h, w} xpad[n, h*s + i, w*s + j, c] * g[n, h, w, d]`` as a
    loop over bands of output rows: each band's im2col patches (all images, R rows, every column, kh*kw*cin
    columns) times its rows of ``g``, accumulated in float32."""
    kh, kw, cin, cout = kernel_shape
    n, h, w, _ = x.shape
    out_h, out_w = g.shape[1], g.shape[2]
    (top, bottom), (left, right) = jax.lax.padtype_to_pads((h, w), (kh, kw), (stride, stride), "SAME")
    columns = kh * kw * cin
    rows = max(1, min(out_h, band_bytes // max(1, n * out_w * columns * x.dtype.itemsize)))
    bands = math.ceil(out_h / rows)
    # Zero rows of g past the image contribute nothing, so the last band may run past the bottom.
    g = jnp.pad(g, ((0, 0), (0, bands * rows - out_h), (0, 0), (0, 0)))
    band_in = (rows - 1) * stride + kh  # input rows one band reads
    need = (bands - 1) * rows * stride + band_in
    xp = jnp.pad(x, ((0, 0), (top, max(bottom, need - h - top)), (left, right), (0, 0)))

    def band(acc, b):
        xs = jax.lax.dynamic_slice_in_dim(xp, b * rows * stride, band_in, axis=1)
        gs = jax.lax.dynamic_slice_in_dim(g, b * rows, rows, axis=1)
        patches = jnp.concatenate(
            [xs[:, i:i + (rows - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
             for i in range(kh) for j in range(kw)], axis=-1)
        return acc + jnp.einsum("nhwk,nhwd->kd", patches, gs, preferred_element_type=jnp.float32), None

    acc, _ = jax.lax.scan(band, jnp.zeros((columns, cout), jnp.float32), jnp.arange(bands))
    return acc.reshape(kh, kw, cin, cout)
