"""2-D convolution (NHWC / HWIO, SAME padding) that is fast on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as one convolution whose window is the whole image (the
batch and pixels are the contraction), a shape Eigen runs many times slower than the forward pass; that alone
made the WESPE step much slower than PyTorch's (``launch/benchmark.py --mode=torch_ratio``). The same gradient
written as a loop over bands of output rows, each band an im2col patch matrix small enough to stay in cache
times the output gradient (``dk = patches^T @ g``), runs at about the forward's speed. A layer with few output
channels (the generators' 9x9 64->3 output layer) instead gets XLA's kernel-gradient convolution with the batch
and the output channels swapped (few_output_kernel_grad, faster than XLA's own there). The timings are in the
README's Benchmarks.

On CPU each stride-1 convolution (forward and input gradient) also picks the faster of XLA:CPU's two
convolution libraries for its shape. Which formulation each part of each convolution takes (library, kernel-gradient
form, band size) is measured once per machine and jaxlib by :mod:`wespe.conv_tuning` (cached; see there for
``WESPE_CONV_CHOICE``), or taken from the thresholds below (:func:`heuristic`, tuned on one AVX2 AMD EPYC: the
ranking differs on other CPUs). All of it is CPU only
(``jax.lax.platform_dependent``): GPUs and TPUs keep XLA's own convolutions and gradients (cuDNN / the TPU
convolution emitter). Results equal XLA's up to float summation order (tested against XLA and a float64 NumPy
convolution). The choice is made when the program is lowered, not when it is traced: a step traced on a CPU-only
machine and lowered (``jax.export``) for ``cuda`` or ``tpu`` holds none of the CPU formulations, which are traced
under the name scope :data:`CPU_ONLY_SCOPE` so that HLO text, profiles and tests can tell
(tests/test_accelerator_lowering.py).

The band loop sums over the batch inside each iteration, so a program partitioned over several devices would
all-reduce once per band (and with many forced CPU devices on few cores the rendezvous can time out): code that
traces a multi-device program wraps it in ``with kernel_gradient("xla"):``
(``wespe.train_step.make_train_step`` does).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Bytes of one band's patch matrix: small enough to stay in a core's L2/L3 while it is multiplied (measured
# faster than one whole-image patch matrix, and than much larger bands).
BAND_BYTES = 2 * 2**20
# The band sizes a measured choice (wespe.conv_tuning) tries: the right one depends on the CPU's caches.
BAND_CANDIDATES = (2**19, 2**21, 2**23)
# Above this many patch columns (kernel height x width x input channels) per output channel the band loop is
# slow: a tall patch matrix against a few output channels is bound by memory, not arithmetic. Such a layer (the
# generators' 9x9 64->3 output layer) takes the transposed kernel gradient instead (few_output_kernel_grad).
MAX_COLUMNS_PER_OUTPUT = 256
# YNNPACK leaves a convolution whose input and output features are both at most this many to Eigen.
YNN_MIN_FEATURES = 17
# Below this many multiply-adds a kernel gradient is cheap whatever its form, and XLA's compiles faster than the
# band loop (small test networks compile many steps).
MIN_BANDED_MACS = 2**27
KERNEL_GRADIENTS = ("banded", "xla")
# XLA:CPU hands f32 convolutions and dots to YNNPACK by default (the training step's options,
# wespe.compiler_options, keep it for dots and convolutions). On the 2-core AVX2 test machine YNNPACK ran the
# generators' 3x3 64->64 layers (most of the step's FLOPs) slower than XLA's Eigen convolution, but Eigen is
# several times slower than YNNPACK on convolutions with few output channels (the generators' 9x9 64->3 output
# layer, the input gradient of their 9x9 3->64 input layer; timings in the README's Benchmarks). XLA picks one
# library for all convolutions of a program, so each convolution chooses here: YNNPACK takes a convolution only
# if its output is no larger than its input (``IsConvolutionOpSupportedByYnn``), and a stride-1 convolution with
# at least EIGEN_MIN_OUTPUT_CHANNELS outputs is computed with one extra output row (sliced off), which keeps it
# on Eigen. Results equal XLA's plain convolution up to float summation order.
EIGEN_MIN_OUTPUT_CHANNELS = 8
_KERNEL_GRADIENT = contextvars.ContextVar("wespe_conv_kernel_gradient", default="banded")
# Name scope of every CPU-only formulation (in the op names / locations of lowered programs).
CPU_ONLY_SCOPE = "wespe_cpu_only"


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


def _on_cpu(*args, cpu, default):
    """``jax.lax.platform_dependent(*args, cpu=cpu, default=default)``, ``cpu`` traced under
    :data:`CPU_ONLY_SCOPE`. The branch is picked by the platform the program is lowered for, and a program lowered
    for other platforms only keeps ``default``."""
    def marked(*a):
        with jax.named_scope(CPU_ONLY_SCOPE):
            return cpu(*a)
    return jax.lax.platform_dependent(*args, cpu=marked, default=default)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME")`` for NHWC images and HWIO
    kernels, with a kernel gradient that is fast on CPU (see the module docstring)."""
    return _conv2d(x, kernel, stride)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_DIMENSIONS)


def _cpu_stride1_conv(x: jax.Array, kernel: jax.Array, pads, library: str) -> jax.Array:
    """A stride-1 convolution with explicit ``pads`` ((top, bottom), (left, right)) on CPU ``library``:
    ``ynnpack`` is the plain convolution (XLA hands it to YNNPACK where YNNPACK supports the shape, else to
    Eigen), ``eigen`` the same with one extra output row (sliced off), which keeps it on Eigen."""
    if library == "ynnpack":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSIONS)
    (top, bottom), cols = pads
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((top, bottom + 1), cols),
                                        dimension_numbers=_DIMENSIONS)[:, :-1]


def _choose(x_shape, kernel_shape, stride: int, dtype, part: str) -> str:
    """The CPU formulation of ``part`` (wespe.conv_tuning: measured, cached or by the thresholds here)."""
    from wespe import conv_tuning  # it times this module's formulations
    shape = conv_tuning.ConvShape.of(x_shape, kernel_shape, stride, dtype)
    if not shape.is_concrete:  # a shape-polymorphic export: its sizes are not known, so not measurable
        return heuristic(shape, part)
    return conv_tuning.choose(shape, part)


def candidates(shape, part: str) -> tuple[str, ...]:
    """The CPU formulations of ``part`` (``forward``, ``input_grad``, ``kernel_grad``) of a convolution of
    ``shape`` (a :class:`wespe.conv_tuning.ConvShape`), each equal to XLA's convolution up to float summation
    order. A strided forward or input gradient has one (XLA's); a kernel gradient may be XLA's, the transposed
    one of few_output_kernel_grad (stride 1, fewer than YNN_MIN_FEATURES outputs) or banded_kernel_grad with
    each of BAND_CANDIDATES that gives a different number of rows per band."""
    if part in ("forward", "input_grad"):
        return ("ynnpack", "eigen") if shape.stride == 1 else ("xla",)
    forms = ["xla"] + (["few_output"] if shape.stride == 1 and shape.cout < YNN_MIN_FEATURES else [])
    seen = set()
    for band_bytes in sorted(BAND_CANDIDATES, key=lambda b: b != BAND_BYTES):  # the default's name where equal
        rows = _band_rows(shape.batch, -(-shape.width // shape.stride), shape.kh * shape.kw * shape.cin,
                          shape.itemsize, -(-shape.height // shape.stride), band_bytes)
        if rows not in seen:
            seen.add(rows)
            forms.append(f"banded:{band_bytes}")
    return tuple(forms)


def heuristic(shape, part: str) -> str:
    """The formulation the thresholds of this module pick (tuned on one 2-core AVX2 AMD EPYC)."""
    if part == "forward":  # a strided forward or input gradient is XLA's; stride 1 picks its library
        return "xla" if shape.stride != 1 else "ynnpack" if shape.cout < EIGEN_MIN_OUTPUT_CHANNELS else "eigen"
    if part == "input_grad":  # the rotated kernel's outputs are the input channels
        return "xla" if shape.stride != 1 else "ynnpack" if shape.cin < EIGEN_MIN_OUTPUT_CHANNELS else "eigen"
    few_outputs = shape.kh * shape.kw * shape.cin > MAX_COLUMNS_PER_OUTPUT * shape.cout
    if shape.macs < MIN_BANDED_MACS or (few_outputs and shape.stride != 1):
        return "xla"
    return "few_output" if few_outputs else f"banded:{BAND_BYTES}"


def forward_with(x: jax.Array, kernel: jax.Array, stride: int, form: str) -> jax.Array:
    """The forward pass as CPU formulation ``form`` (one of :func:`candidates` ``forward``)."""
    if form == "xla":
        return _xla_conv(x, kernel, stride)
    pads = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1), "SAME")
    return _cpu_stride1_conv(x, kernel, pads, form)


def _forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    if stride != 1:  # strided layers are few and small (the discriminators'): XLA's choice
        return _xla_conv(x, kernel, stride)
    form = _choose(x.shape, kernel.shape, stride, x.dtype, "forward")
    return _on_cpu(x, kernel, cpu=lambda x_, k_: forward_with(x_, k_, 1, form),
                   default=lambda x_, k_: _xla_conv(x_, k_, 1))


def _transposed_pads(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...]):
    """The pads of a stride-1 SAME convolution's transpose: the output gradient, padded so, convolved with the
    kernel rotated by 180 degrees gives the input gradient (and correlated with x, the kernel gradient)."""
    kh, kw = kernel_shape[:2]
    (top, bottom), (left, right) = jax.lax.padtype_to_pads(x_shape[1:3], (kh, kw), (1, 1), "SAME")
    return (kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)


def input_grad_with(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int,
                    form: str) -> jax.Array:
    """The input gradient of :func:`conv2d` as CPU formulation ``form`` (one of :func:`candidates`
    ``input_grad``): for stride 1 the convolution of ``g`` with the kernel rotated by 180 degrees (input and
    output channels swapped) on ``form``'s library, as the forward picks its own; XLA's transpose otherwise (a
    strided one is lhs-dilated, which YNNPACK never takes)."""
    if form == "xla":
        _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride), jnp.zeros(x_shape, g.dtype))
        return input_vjp(g)[0]
    pads = _transposed_pads(x_shape, kernel.shape)
    return _cpu_stride1_conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), pads, form)


def _input_grad(g: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], stride: int) -> jax.Array:
    if stride != 1:
        return input_grad_with(g, kernel, x_shape, stride, "xla")
    form = _choose(x_shape, kernel.shape, stride, g.dtype, "input_grad")
    return _on_cpu(g, kernel, cpu=lambda g_, k_: input_grad_with(g_, k_, x_shape, 1, form),
                   default=lambda g_, k_: input_grad_with(g_, k_, x_shape, 1, "xla"))


def kernel_grad_with(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                     form: str) -> jax.Array:
    """The kernel gradient of :func:`conv2d` as CPU formulation ``form`` (one of :func:`candidates`
    ``kernel_grad``: ``xla``, ``few_output`` or ``banded:<band bytes>``), in ``x``'s dtype."""
    if form == "xla":
        return xla_kernel_grad(x, g, kernel_shape, stride)
    if form == "few_output":
        return few_output_kernel_grad(x, g, kernel_shape).astype(x.dtype)
    if form.startswith("banded:"):
        return banded_kernel_grad(x, g, kernel_shape, stride, int(form.split(":", 1)[1])).astype(x.dtype)
    raise ValueError(f"unknown kernel gradient formulation {form!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, kernel, stride):
    return _forward(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    # With symbolic zeros the backward pass knows which inputs are differentiated: a frozen kernel (VGG's, the
    # other network's in a GAN step) or an input photo gets no gradient traced, chosen or measured.
    return _forward(x.value, kernel.value, stride), (x.value, kernel.value, x.perturbed, kernel.perturbed)


def _conv2d_bwd(stride, residuals, g):
    x, kernel, x_perturbed, kernel_perturbed = residuals
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None
    dx = _input_grad(g, kernel, x.shape, stride) if x_perturbed else None
    if not kernel_perturbed:
        return dx, None
    if _KERNEL_GRADIENT.get() == "xla":
        form = "xla"
    else:
        form = _choose(x.shape, kernel.shape, stride, x.dtype, "kernel_grad")
    if form == "xla":
        dk = xla_kernel_grad(x, g, kernel.shape, stride)
    else:
        dk = _on_cpu(  # both branches must give the same dtype
            x, g, cpu=lambda x_, g_: kernel_grad_with(x_, g_, kernel.shape, stride, form),
            default=lambda x_, g_: xla_kernel_grad(x_, g_, kernel.shape, stride).astype(x.dtype))
    return dx, dk.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd, symbolic_zeros=True)


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
    rows = _band_rows(n, out_w, columns, x.dtype.itemsize, out_h, band_bytes)
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


def _band_rows(batch: int, out_w: int, columns: int, itemsize: int, out_h: int, band_bytes: int) -> int:
    """Output rows per band of banded_kernel_grad: as many as keep a band's patch matrix within band_bytes."""
    return max(1, min(out_h, band_bytes // max(1, batch * out_w * columns * itemsize)))


def few_output_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """The kernel gradient of a stride-1 :func:`conv2d` with few output channels, as XLA's kernel-gradient
    convolution with the roles of the batch and the output channels swapped.

    XLA's own is a convolution over the whole image with the batch as input features and the few output
    channels as output features, which Eigen runs slowly. Here the output channels are the batch and the input
    channels the output features: ``dk[i, j, c, d] = sum_{n, u, v} gpad[d, i' + u, j' + v, n] x[u, v, n, c]``
    with ``i' = kh - 1 - i`` (several times faster for the generators' 9x9 64->3 layer; timings in the README's
    Benchmarks). It is split into chunks of fewer than YNN_MIN_FEATURES images and input channels, summed over
    the image chunks: YNNPACK would take the whole one and runs it much slower than Eigen.
    """
    n, cin = x.shape[0], x.shape[3]
    pads = _transposed_pads(x.shape, kernel_shape)
    gt, xt = g.transpose(3, 1, 2, 0), x.transpose(1, 2, 0, 3)  # [d, h, w, n] images, [h, w, n, c] kernels
    chunk = YNN_MIN_FEATURES - 1

    def part(a, b):
        return jax.lax.conv_general_dilated(gt[..., a:a + chunk], xt[:, :, a:a + chunk, b:b + chunk], (1, 1), pads,
                                            dimension_numbers=_DIMENSIONS)

    out = jnp.concatenate([sum(part(a, b) for a in range(0, n, chunk)) for b in range(0, cin, chunk)], axis=-1)
    return jnp.flip(out, (1, 2)).transpose(1, 2, 3, 0)  # [d, i', j', c] -> [i, j, c, d]
