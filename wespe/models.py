"""The DPED/WESPE networks in Flax NNX: InstanceNorm, Generator (DPED ResNet) and Discriminator.

Layouts follow the official DPED TensorFlow code (``models.py``): NHWC, HWIO kernels, SAME padding,
truncated-normal(0.01) kernels and 0.01 biases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from wespe import ops
from wespe.conv import conv2d

NORMS = ("instance", "batch", "none")
INITS = ("dped", "he")
OUTPUTS = ("dped", "residual")
GLOBAL_COLORS = ("none", "affine", "base_affine")
# base_affine: Gaussian base layer of this sigma (px), on 2 * 3 sigma + 1 taps.
BASE_SIGMA = 2.0
BASE_TAPS = 13
DISCRIMINATOR_HEADS = ("dped_fc", "global_pool")

_KERNEL_INIT = nnx.initializers.truncated_normal(stddev=0.01)  # TF truncated_normal: stddev of the untruncated
_BIAS_INIT = nnx.initializers.constant(0.01)
# He (fan-in) normal: keeps activations at unit scale through ReLU layers, so a fresh generator's output
# already depends on its input (with the official 0.01 init every non-normalised layer shrinks it ~4x).
_HE_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class Conv(nnx.Module):
    """2-D convolution, NHWC / HWIO, SAME padding, with bias.

    ``freeze_bias``: the bias is held out of differentiation (stop_gradient). Used when a per-channel
    normalisation follows directly: it removes the bias exactly, so the true gradient is zero and Adam
    would otherwise turn float rounding noise into +-lr steps (and make sharded runs drift from
    single-device ones). The bias is kept so official checkpoints load and parameter counts match.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int = 1, *,
                 freeze_bias: bool = False, init: str = "dped", rngs: nnx.Rngs):
        kernel_init = _HE_INIT if init == "he" else _KERNEL_INIT
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
        self.bias = nnx.Param(_BIAS_INIT(rngs.params(), (out_features,)))
        self.stride = stride
        self.freeze_bias = freeze_bias

    @property
    def radius(self) -> int:
        """Pixels of context on each side an output pixel needs: ``k // 2`` (an upper bound for even kernels)."""
        if self.stride != 1:
            raise ValueError("only a stride-1 convolution has a context radius (tiled inference needs stride 1)")
        return max(self.kernel.shape[:2]) // 2

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(x.dtype)
        y = conv2d(x, kernel, self.stride)
        bias = self.bias[...].astype(x.dtype)
        if self.freeze_bias:
            bias = jax.lax.stop_gradient(bias)
        return y + bias


class InstanceNorm(nnx.Module):
    """Instance normalisation as the DPED code: per sample and channel over H, W; eps 1e-3; affine.

    ``y = scale * (x - mean) / sqrt(var + eps) + shift`` with the biased (population) variance.
    Statistics are computed in float32 even when x is bfloat16.
    """

    def __init__(self, num_features: int, *, epsilon: float = 1e-3):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.shift = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.epsilon = epsilon

    @staticmethod
    def statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-sample, per-channel mean and (biased) variance over H, W, shapes (N, 1, 1, C)."""
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
        return mean, var

    def normalize(self, x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
        """Apply the affine normalisation with given statistics (lets tiled inference use whole-image stats)."""
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        y = (x.astype(jnp.float32) - mean) * inv + self.shift[...]
        return y.astype(x.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, var = self.statistics(x)
        return self.normalize(x, mean, var)


def make_norm(norm: str, num_features: int, *, rngs: nnx.Rngs) -> nnx.Module | None:
    if norm == "instance":
        return InstanceNorm(num_features)
    if norm == "batch":
        # Batch statistics in training; nnx.view(model, use_running_average=True) for inference. Two-pass variance
        # (mean of squared deviations, as InstanceNorm): flax's default E[x^2] - E[x]^2 cancels where the mean is
        # large against the spread, which amplified float32 summation-order differences ~10x (a sharded step's
        # gradients differed from the single-device step's by 4.7e-5 normwise instead of 4.6e-6, AVX-512 CPU).
        return nnx.BatchNorm(num_features, epsilon=1e-3, momentum=0.99, use_fast_variance=False, rngs=rngs)
    if norm == "none":
        return None
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def _apply_norm(norm: nnx.Module | None, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)


@dataclasses.dataclass(frozen=True)
class Stage:
    """The generator from one norm's input to the next: the unit that :meth:`Generator.forward` and tiled inference
    run. Norm slot ``k`` is block ``k // 2``'s ``norm{k % 2 + 1}``.

    A stage starts from the image (``applies`` None) or by normalising the carried pre-norm activation ``A`` with
    slot ``applies``, and ends with the input of slot ``produces`` (the next ``A``) or with the output image
    (``produces`` None). ``radius``: the context its convolutions need, pixels on each side of an output pixel;
    ``image_radius``: the context it reads of the image itself besides (the ``base_affine`` colour path's blur).
    """

    applies: int | None
    produces: int | None
    radius: int
    image_radius: int = 0

    @property
    def halo(self) -> int:
        """How much larger than its output a window of this stage's inputs must be on each side."""
        return max(self.radius, self.image_radius)

    @property
    def reads(self) -> tuple[str, ...]:
        """What it starts from: the image ``x``; ``A`` alone after a block's first norm (the block's inner path);
        ``H`` (the residual stream) and ``A`` after its second norm, which adds to the stream. The output stage
        reads ``x`` as well (the output map's input path)."""
        if self.applies is None:
            return ("x",)
        starts = ("A",) if self.applies % 2 == 0 else ("H", "A")
        return starts + ("x",) if self.produces is None else starts

    @property
    def writes(self) -> tuple[str, ...]:
        """What it ends with: the output ``y``; ``A`` alone before a block's second norm; ``H`` and ``A`` before a
        block's first norm (the stream it read, or made from the image, and its first conv of it)."""
        if self.produces is None:
            return ("y",)
        return ("A",) if self.produces % 2 else ("H", "A")


class ResidualBlock(nnx.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> ReLU, then + block input (after the ReLU, as DPED).

    Its layers only: :meth:`Generator.run_stage` applies them (one forward for whole images and tiled windows)."""

    def __init__(self, width: int, norm: str, *, init: str = "dped", rngs: nnx.Rngs):
        normed = norm != "none"
        self.conv1 = Conv(width, width, 3, freeze_bias=normed, init=init, rngs=rngs)
        self.norm1 = make_norm(norm, width, rngs=rngs)
        self.conv2 = Conv(width, width, 3, freeze_bias=normed, init=init, rngs=rngs)
        self.norm2 = make_norm(norm, width, rngs=rngs)


class Generator(nnx.Module):
    """The DPED image-enhancement ResNet (401,475 parameters at the defaults). Fully convolutional.

    Input: NHWC RGB in [0, 1], any H x W.
    ``init``: ``dped`` = the official truncated-normal(0.01) kernels (a fresh generator outputs a nearly
    constant grey); ``he`` = He-normal kernels for the hidden layers (the output depends on the input from
    the first step; trains much faster in short runs, leaves init parity).
    ``output``: ``dped`` = the official ``tanh(conv_out(h)) * 0.58 + 0.5`` (range ~[-0.08, 1.08]);
    ``residual`` = ``colour(x) + conv_out(h)`` with ``conv_out`` zero-initialised, so a fresh generator is the
    identity and training starts at the input's quality instead of a grey image that must first relearn the
    photo (unclipped; clip for display).
    ``global_color``: ``none``, ``affine``: ``colour(x) = M x + b``, one learned 3x3 colour matrix and offset
    (initialised to the identity) applied to every pixel, or ``base_affine``: the same map applied to a Gaussian
    base layer of x (sigma :data:`BASE_SIGMA` px, normalised at the border) while the detail ``x - base`` passes
    through unchanged: ``colour(x) = M base + b + (x - base)``. Much of a camera's look (white balance,
    contrast, black level) is a global map that 48-100 px patches cannot infer locally; the affine path gives it
    a cheap, smooth route, so the convolutional path is left with texture (no blotchy local colour). A plain
    affine stretch also multiplies sensor noise and JPEG artefacts by its gains (x2.5 in a blue channel whose
    contrast it restores); ``base_affine`` stretches only the base, measured +0.06 SSIM on the quality
    benchmark's held-out photos for the same colour map. Both are linear: tiled inference stays exact (the
    base needs ``BASE_TAPS // 2`` px of context, within the convolutions' halo).
    """

    def __init__(self, *, width: int = 64, num_blocks: int = 4, norm: str = "instance", channels: int = 3,
                 init: str = "dped", output: str = "dped", global_color: str = "none",
                 rngs: nnx.Rngs | None = None):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown generator output {output!r}; expected one of {OUTPUTS}")
        if global_color not in GLOBAL_COLORS:
            raise ValueError(f"unknown global_color {global_color!r}; expected one of {GLOBAL_COLORS}")
        if global_color != "none" and output != "residual":
            raise ValueError("global_color needs output='residual' (the official output mapping has no input path)")
        if width < 1 or num_blocks < 0:
            raise ValueError(f"generator width must be >= 1 and num_blocks >= 0, got {width}, {num_blocks}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.width, self.num_blocks, self.norm = width, num_blocks, norm
        self.output, self.global_color = output, global_color
        self.conv_in = Conv(channels, width, 9, init=init, rngs=rngs)
        self.blocks = nnx.List([ResidualBlock(width, norm, init=init, rngs=rngs) for _ in range(num_blocks)])
        self.conv_mid1 = Conv(width, width, 3, init=init, rngs=rngs)
        self.conv_mid2 = Conv(width, width, 3, init=init, rngs=rngs)
        # The last layer keeps the official small init even under "he": tanh starts unsaturated.
        self.conv_out = Conv(width, channels, 9, rngs=rngs)
        if output == "residual":  # zero residual: the generator starts as the identity (or its colour map)
            self.conv_out.kernel[...] = jnp.zeros_like(self.conv_out.kernel[...])
            self.conv_out.bias[...] = jnp.zeros_like(self.conv_out.bias[...])
        if global_color != "none":
            self.color_matrix = nnx.Param(jnp.eye(channels, dtype=jnp.float32))
            self.color_bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def affine(self, colors: jax.Array) -> jax.Array:
        """The colour matrix and offset applied to ``colors`` (..., 3), pixel by pixel (the identity without
        ``global_color``)."""
        if self.global_color == "none":
            return colors
        m = self.color_matrix[...].astype(colors.dtype)
        return jnp.einsum("...c,dc->...d", colors, m) + self.color_bias[...].astype(colors.dtype)

    def color(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """The global colour map applied to NHWC images ``x`` (the identity without ``global_color``).

        ``mask`` (N, H, W, 1) bool marks the true image inside a zero-padded window (tiled inference): the
        ``base_affine`` base is a blur normalised by the blurred mask, so it is the same for a pixel of a
        window as for that pixel of the whole image, up to ``BASE_TAPS // 2`` px from the window's cut edges.
        """
        if self.global_color != "base_affine":
            return self.affine(x)
        taps = ops.gaussian_taps(BASE_TAPS, BASE_SIGMA)
        inside = jnp.ones(x.shape[:-1] + (1,), x.dtype) if mask is None else mask.astype(x.dtype)
        weight = ops.separable_blur(inside, taps)
        base = ops.separable_blur(x * inside, taps) / jnp.maximum(weight, jnp.asarray(1e-6, x.dtype))
        return self.affine(base) + (x - base)

    def output_map(self, x: jax.Array, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """The output from the input and the last hidden features (shared with tiled inference; ``mask``: see
        :meth:`color`)."""
        out = self.conv_out(features)
        if self.output == "residual":
            return self.color(x, mask) + out
        return jnp.tanh(out) * 0.58 + 0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Generator expects NHWC images, got shape {x.shape}")
        return self.forward(x)

    @property
    def num_norm_slots(self) -> int:
        """Two per residual block, whatever ``norm`` is (:class:`Stage` numbers them)."""
        return 2 * len(self.blocks)

    def norm_at(self, slot: int) -> nnx.Module | None:
        """The norm layer of norm slot ``slot`` (None: ``norm='none'``)."""
        block = self.blocks[slot // 2]
        return block.norm2 if slot % 2 else block.norm1

    def _conv_into(self, slot: int) -> Conv:
        """The conv whose output norm slot ``slot`` normalises."""
        block = self.blocks[slot // 2]
        return block.conv2 if slot % 2 else block.conv1

    def stages(self) -> tuple[Stage, ...]:
        """The network as :class:`Stage` s in order: the one description of its layer order, which
        :meth:`forward` runs and from which tiled inference takes its stages and halos."""
        slots = self.num_norm_slots
        tail = self.conv_mid1.radius + self.conv_mid2.radius + self.conv_out.radius
        stages = []
        for applies in (None, *range(slots)):  # a stage starts at each norm (and at the image), ends at the next
            produces = 0 if applies is None else applies + 1
            produces = None if produces == slots else produces
            radius = (self.conv_in.radius if applies is None else 0) + (
                tail if produces is None else self._conv_into(produces).radius)
            image_radius = BASE_TAPS // 2 if produces is None and self.global_color == "base_affine" else 0
            stages.append(Stage(applies, produces, radius, image_radius))
        return tuple(stages)

    def run_stage(self, stage: Stage, inputs: Mapping[str, jax.Array], *, mask: jax.Array | None = None,
                  normalize: Callable[[nnx.Module, jax.Array, int], jax.Array] | None = None
                  ) -> dict[str, jax.Array]:
        """``stage`` on ``inputs`` (its :attr:`Stage.reads`); returns its :attr:`Stage.writes`.

        ``mask``: see :meth:`forward`. ``normalize(norm, a, slot)``: how the stage's norm is applied (default:
        the norm's own call); tiled inference passes whole-image statistics this way.
        """
        def keep(h):
            return h if mask is None else jnp.where(mask, h, jnp.zeros((), h.dtype))

        if stage.applies is None:
            h = keep(jax.nn.relu(self.conv_in(inputs["x"])))
        else:
            norm, a = self.norm_at(stage.applies), inputs["A"]
            if norm is not None:
                a = normalize(norm, a, stage.applies) if normalize is not None else norm(a)
            if stage.applies % 2 == 0:  # the block's inner path: its second conv follows
                return {"A": self._conv_into(stage.produces)(keep(jax.nn.relu(a)))}
            h = keep(jax.nn.relu(a) + inputs["H"])  # after the block: back into the residual stream
        if stage.produces is not None:
            return {"H": h, "A": self._conv_into(stage.produces)(h)}
        h = keep(jax.nn.relu(self.conv_mid1(h)))
        h = keep(jax.nn.relu(self.conv_mid2(h)))
        return {"y": self.output_map(inputs["x"], h, mask)}

    def forward(self, x: jax.Array, *, mask: jax.Array | None = None, means: Sequence[jax.Array | None] = (),
                variances: Sequence[jax.Array | None] = (), stop_at: int | None = None) -> jax.Array:
        """The network, stage by stage (:meth:`stages`); with the keywords, on a window of a larger image (exact
        tiled inference).

        ``mask`` (N, h, w, 1) bool, True inside the true image: activations outside it are reset to zero before
        every conv, so convs see the whole image's SAME zero padding. ``means[k]``, ``variances[k]``:
        (N, 1, 1, width) whole-image statistics for norm slot ``k`` when it is an InstanceNorm (BatchNorm must
        be on running averages). ``stop_at=k`` returns the pre-norm activation of norm slot ``k`` (its conv's
        output) instead of the image. Without keywords this is exactly the plain call.
        """
        def normalize(norm, a, slot):
            if means and isinstance(norm, InstanceNorm):
                return norm.normalize(a, means[slot], variances[slot])
            return norm(a)

        carried = {"x": x}
        for stage in self.stages():
            carried.update(self.run_stage(stage, carried, mask=mask, normalize=normalize))
            if stop_at is not None and stage.produces == stop_at:
                return carried["A"]
        return carried["y"]


# (features, kernel size, stride, instance norm after the activation) of the official DPED discriminator.
DISCRIMINATOR_CONVS = ((48, 11, 4, False), (128, 5, 2, True), (192, 3, 1, True), (192, 3, 1, True),
                       (128, 3, 2, True))


def _leaky_relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(0.2 * x, x)


class Discriminator(nnx.Module):
    """The official DPED adversary: 5 convs (LeakyReLU 0.2, then InstanceNorm) -> dense 1024 -> logits.

    ``in_channels``: 1 for the texture adversary (grayscale), 3 for the colour adversary (blurred RGB).
    ``head``: ``dped_fc`` flattens the last feature map into the dense layer, as the official code, so it
    only accepts ``input_size`` x ``input_size`` images (128*7*7 features for 100x100); ``global_pool``
    averages the map over space first and accepts any size (leaves parity with the official code).
    ``num_logits``: 2 for the official 2-way softmax (class 0 = real/target, 1 = fake/enhanced), 1 for a
    single real-vs-fake logit (BCE, LSGAN, hinge).
    ``init``: ``dped`` (official truncated-normal 0.01 convs) or ``he`` (He-normal convs; the dense layers keep
    the official init). Without instance norm the 0.01 init shrinks the signal ~4x per layer.
    """

    def __init__(self, in_channels: int = 3, *, head: str = "dped_fc", input_size: int = 100,
                 num_logits: int = 2, norm: str = "instance", init: str = "dped", rngs: nnx.Rngs | None = None):
        if head not in DISCRIMINATOR_HEADS:
            raise ValueError(f"unknown discriminator head {head!r}; expected one of {DISCRIMINATOR_HEADS}")
        if norm not in ("instance", "none"):
            raise ValueError(f"discriminator norm must be 'instance' or 'none', got {norm!r}")
        if init not in INITS:
            raise ValueError(f"unknown discriminator init {init!r}; expected one of {INITS}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.head, self.input_size = head, input_size
        convs, norms, features, size = [], [], in_channels, input_size
        for out, k, stride, normed in DISCRIMINATOR_CONVS:
            convs.append(Conv(features, out, k, stride, init=init, rngs=rngs))
            norms.append(InstanceNorm(out) if (normed and norm == "instance") else None)
            features, size = out, math.ceil(size / stride)  # SAME padding
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        flat = features * size * size if head == "dped_fc" else features
        self.fc = nnx.Linear(flat, 1024, kernel_init=_KERNEL_INIT, bias_init=_BIAS_INIT, rngs=rngs)
        self.out = nnx.Linear(1024, num_logits, kernel_init=_KERNEL_INIT, bias_init=_BIAS_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Discriminator expects NHWC images, got shape {x.shape}")
        if self.head == "dped_fc" and x.shape[1:3] != (self.input_size, self.input_size):
            raise ValueError(
                f"Discriminator head 'dped_fc' needs {self.input_size}x{self.input_size} inputs (its dense layer "
                f"is sized for that), got {x.shape[1]}x{x.shape[2]}. Use head='global_pool' for other sizes "
                f"(leaves parity with the official DPED code) or set the discriminator input_size.")
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = _apply_norm(norm, _leaky_relu(conv(h)))
        h = h.reshape(h.shape[0], -1) if self.head == "dped_fc" else jnp.mean(h, axis=(1, 2))
        h = _leaky_relu(self.fc(h))
        return self.out(h).astype(jnp.float32)


def inference_view(module: nnx.Module) -> nnx.Module:
    """``module`` as used for inference: its BatchNorm layers on their running averages (a no-op otherwise)."""
    if any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(module)):
        return nnx.view(module, only=nnx.BatchNorm, use_running_average=True)
    return module


def count_parameters(module: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param leaves) in a module."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))
