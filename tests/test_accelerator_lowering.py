"""GPU and TPU programs from a CPU-only machine: the training step and the inference forward, lowered with
``jax.export`` for ``cuda`` and ``tpu`` (nothing is compiled for them, so no accelerator is needed).

Why: the test machines have no accelerator, yet :mod:`wespe.conv` has CPU-only formulations of the convolutions
and their gradients (the banded and the few-output kernel gradients, the extra-row convolutions that pick
XLA:CPU's library), and :func:`wespe.train_step.make_train_step` gives ``jax.jit`` XLA:CPU compiler options when it
is built on a CPU. None of it may reach a GPU or TPU program. The CPU formulations sit in
``jax.lax.platform_dependent`` branches, which are resolved when the program is lowered (not when it is traced
on this CPU), and are traced under the name scope ``conv.CPU_ONLY_SCOPE``. So the step is built here exactly as
training builds it on this machine, exported per platform, and the module text is checked:

* the exported platforms (and, sharded, the device count) are the ones asked for;
* no op of a ``cuda`` / ``tpu`` / ``(cuda, tpu)`` module carries the CPU-only scope, while the ``cpu`` module of
  the same trace does (the control: each CPU formulation was traced, and the scope is there to be seen);
* no custom call bar XLA's sharding annotations and jax.export's shape checks (nothing tied to one runtime:
  LAPACK, DUCC FFT, Python callbacks), no loop (the banded kernel gradient's is the step's only one), and no
  XLA:CPU option (``jax.export`` keeps the program, not ``jax.jit``'s compiler options).

The inference forward is exported with symbolic (n, h, w): one GPU/TPU program for every image size.

The sharded step (a data=2 x fsdp=2 mesh) needs several devices, so it runs in a subprocess with forced CPU
devices (this file run as a script, as tests/test_parallel.py runs tests/sharding_worker.py). Exporting it for
another platform needs no abstract mesh: the module records the mesh's axes and the shardings, not the CPU
devices, and ``Exported.nr_devices`` says how many devices it must run on.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import script_server

ACCELERATORS = (("cuda",), ("tpu",), ("cuda", "tpu"))
# Custom calls every platform takes: XLA's sharding annotations and jax.export's checks of symbolic dimensions.
# Any other target (LAPACK, DUCC FFT, a Python callback, ...) would tie a module to one runtime.
PORTABLE_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "xla.sdy.GlobalToLocalShape",
                  "xla.sdy.LocalToGlobalShape", "shape_assertion"}
CPU_FORMULATIONS = ("_cpu_stride1_conv", "banded_kernel_grad", "few_output_kernel_grad")
DEVICES = 4  # the sharded step's mesh: data=2 x fsdp=2 (FSDP splits the VGG kernels, the batch is split 4 ways)


def tiny_config():
    """wespe_plus shrunk: 16 channels (so the 9x9 16->3 output layer takes the few-output kernel gradient on
    CPU), one block, 32 px patches, batch 4, random VGG-19 up to relu1_2, the global-pool discriminator head;
    its restoration term on (a run fits its camera model to the photos; here the one launch/benchmark.py times
    with, so the blur, noise and JPEG steps are in the exported programs too)."""
    from wespe import config as configs
    c = configs.wespe_plus()
    assert c.weights.restoration > 0
    c.vgg_weights, c.content_layer = "random", "relu1_2"
    c.batch_size, c.patch_size = 4, 32
    c.generator.width, c.generator.num_blocks = 16, 1
    c.discriminator.head = "global_pool"
    return c


def summary(exported) -> dict:
    """What the assertions need from one exported module (JSON-able: the sharded worker prints it)."""
    from wespe import conv
    text = exported.mlir_module()
    calls = set(re.findall(r"custom_call @([\w.$-]+)", text)) | set(re.findall(r'call_target_name = "([^"]+)"', text))
    return {"platforms": list(exported.platforms), "nr_devices": exported.nr_devices,
            "cpu_only_ops": text.count(conv.CPU_ONLY_SCOPE), "custom_calls": sorted(calls),
            "cpu_options": "xla_cpu" in text, "loops": text.count("stablehlo.while")}


def export_step(step, config, platforms_list) -> dict:
    """``{"cuda,tpu": summary, ...}``: the step's program exported for each tuple of platforms (one trace)."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from wespe import train_step
    abstract = train_step.abstract_train_state(config)[0]
    shape_of = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)  # noqa: E731
    image = jax.ShapeDtypeStruct((config.batch_size, config.patch_size, config.patch_size, 3), jnp.float32)
    args = (abstract, shape_of(step.vgg_weights), {"source": image, "target": image},
            jax.eval_shape(lambda: jax.random.key(0)), shape_of(step.color_pools))
    state_avals = [(x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract)]
    out = {}
    for platforms in platforms_list:
        exported = export.export(step.jitted, platforms=platforms)(*args)
        s = out[",".join(platforms)] = summary(exported)
        # A whole training step: the state comes back with the leaves it went in with.
        s["state_out"] = [(x.shape, str(x.dtype)) for x in exported.out_avals[:len(state_avals)]] == state_avals
        s["exported"] = exported
    return out


def assert_accelerator_module(s: dict, platforms: tuple[str, ...], nr_devices: int = 1):
    assert s["platforms"] == list(platforms)
    assert s["nr_devices"] == nr_devices
    assert s["cpu_only_ops"] == 0, f"CPU-only formulations in the {platforms} module"
    assert set(s["custom_calls"]) <= PORTABLE_CALLS, s["custom_calls"]
    assert not s["cpu_options"]
    assert s["loops"] == 0  # the banded kernel gradient's loop is the step's only one
    assert s["state_out"]


# ------------------------------------------------------------------------------------------- the training step

def test_train_step_lowers_for_gpu_and_tpu_without_cpu_formulations(monkeypatch):
    """The unsharded step, built on this CPU as training builds it (CPU compiler options on its jit), exported
    for cuda, tpu and both; the cpu export of the same trace is the control."""
    import jax

    from wespe import conv, train_step
    from wespe.evaluation import speed_benchmark
    # Every kernel gradient takes the CPU's banded loop (these tiny layers are below the size from which it is
    # used), and each CPU formulation counts its traces: the control then covers all of them.
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)
    traced = dict.fromkeys(CPU_FORMULATIONS, 0)
    for name in CPU_FORMULATIONS:
        def counting(*args, _f=getattr(conv, name), _name=name, **kwargs):
            traced[_name] += 1
            return _f(*args, **kwargs)
        monkeypatch.setattr(conv, name, counting)

    config = tiny_config()
    _, graphdefs = train_step.abstract_train_state(config)
    weights, pre = train_step.load_content_network(config)
    step = train_step.make_train_step(config, graphdefs, weights, pre,
                                 degradation=speed_benchmark.typical_degradation(config))
    assert jax.default_backend() == "cpu"
    modules = export_step(step, config, [*ACCELERATORS, ("cpu",)])

    assert all(traced.values()), traced
    assert modules["cpu"]["cpu_only_ops"] > 0 and modules["cpu"]["loops"] > 0
    for platforms in ACCELERATORS:
        assert_accelerator_module(modules[",".join(platforms)], platforms)


def test_sharded_train_step_lowers_for_gpu_and_tpu():
    """The step built for a data=2 x fsdp=2 mesh of forced CPU devices (a subprocess), exported for cuda, tpu
    and both: 4-device modules, batch and FSDP shardings kept, no CPU formulation."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",  # with the suite's XLA_FLAGS for subprocesses (tests/conftest.py)
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}")
    proc = script_server.run([sys.executable, str(Path(__file__).resolve()), "sharded"], env=env, timeout=300,
                             cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    modules = json.loads(lines[-1][len("RESULT "):])
    assert modules["cpu"]["cpu_only_ops"] > 0  # the forward's CPU formulation (the kernel gradient is XLA's)
    for platforms in ACCELERATORS:
        s = modules[",".join(platforms)]
        assert_accelerator_module(s, platforms, nr_devices=DEVICES)
        assert s["batch_split"]
        assert s["fsdp_leaves"] > 0


def _sharded_worker() -> dict:
    import jax
    from jax.sharding import PartitionSpec as P

    from wespe import parallel, train_step
    from wespe.evaluation import speed_benchmark
    assert jax.device_count() == DEVICES, jax.devices()
    config = tiny_config()
    config.mesh.data, config.mesh.fsdp = 2, 2
    layout = parallel.Layout(parallel.make_mesh(dict(config.mesh)))
    _, graphdefs = train_step.abstract_train_state(config)
    weights, pre = train_step.load_content_network(config)
    step = train_step.make_train_step(config, graphdefs, weights, pre, layout,
                                 degradation=speed_benchmark.typical_degradation(config))
    modules = export_step(step, config, [*ACCELERATORS, ("cpu",)])
    for s in modules.values():
        exported = s.pop("exported")
        shardings = exported.in_shardings_jax(layout.mesh)
        (_, _, batch, _, _), _ = exported.in_tree.unflatten(shardings)  # ((state, vgg, batch, rng, pools), {})
        s["batch_split"] = all(b is not None and b.spec == P(parallel.BATCH_AXES) for b in batch.values())
        s["fsdp_leaves"] = sum(1 for x in shardings if x is not None and "fsdp" in x.spec)  # split parameters
    return modules


# ------------------------------------------------------------------------------------------------ inference

def test_generator_forward_lowers_for_gpu_and_tpu_at_any_image_size():
    """wespe.inference.enhance's whole-image pass, exported with symbolic (n, h, w) for cuda and tpu: no CPU
    formulation.
    The same export with cpu among its platforms runs here (its platform switch picks the CPU branches) and
    equals the jitted pass."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax import export

    from wespe import models
    from wespe.inference import enhance
    for kwargs in ({}, {"output": "residual", "global_color": "base_affine", "init": "he"}, {"norm": "batch"}):
        generator = models.inference_view(models.Generator(width=16, num_blocks=1, rngs=nnx.Rngs(0), **kwargs))
        graphdef, state = nnx.split(generator)
        images = jax.ShapeDtypeStruct(export.symbolic_shape("n, h, w, 3"), jnp.float32)
        for compute_dtype in ("float32", "bfloat16"):
            for platforms in ACCELERATORS:
                exported = export.export(enhance._whole_image, platforms=platforms)(
                    graphdef, state, images, compute_dtype)
                s = summary(exported)
                assert s["platforms"] == list(platforms)
                assert s["cpu_only_ops"] == 0 and set(s["custom_calls"]) <= PORTABLE_CALLS, (kwargs, platforms, s)
        exported = export.export(enhance._whole_image, platforms=("cpu", "cuda", "tpu"))(
            graphdef, state, images, "float32")
        assert summary(exported)["cpu_only_ops"] > 0
        x = np.random.default_rng(0).random((2, 20, 28, 3), np.float32)
        expected = enhance._whole_image(graphdef, state, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(exported.call(state, x)), np.asarray(expected), rtol=1e-5, atol=1e-5)


if __name__ == "__main__" and sys.argv[1:] == ["sharded"]:
    print("RESULT " + json.dumps(_sharded_worker()), flush=True)
