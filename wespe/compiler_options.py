"""``jax.jit`` compiler options of the training step (XLA's own settings, not part of the program).

XLA:CPU hands f32 convolutions, dots and fusions to YNNPACK by default. The training step keeps YNNPACK for dots
and for the convolutions :mod:`wespe.conv` leaves to it (those with few output channels), not for elementwise or
reduction fusions (those measured no faster over the whole step; the timings are in the README's Benchmarks).
Options are ``jax.jit``'s, not the program's: ``jax.export`` drops them, so they follow the platform a step is
compiled on. The state's one-off initialisation has its own (:func:`init_compiler_options`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging

# ``jax.jit`` compiler options of the CPU training step: YNNPACK for dots and (the few-channel) convolutions only.
TRAIN_STEP_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


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


# The state's initialisation runs once and is cheap to run, but XLA:CPU's full optimisation (level 3) spends
# long compiling it (a threefry stream and its float transform per leaf); level 2 compiles it faster into the same
# bits (tests/test_train_step.py compares them; the timings are in the README's Benchmarks). Level 0
# (jax_disable_most_optimizations) rounds some values differently, so a caller's choice of it is kept.
INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 2}


def init_compiler_options(platform: str) -> dict:
    """``jax.jit`` compiler options of the state's initialisation on ``platform``: :data:`INIT_CPU_OPTIONS` on
    CPU unless ``jax_disable_most_optimizations`` is on, none elsewhere."""
    if platform != "cpu" or jax.config.read("jax_disable_most_optimizations"):
        return {}
    return dict(INIT_CPU_OPTIONS)
