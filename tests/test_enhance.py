"""Exact tiled inference: tiled == whole-image for any size and tile, naive tiling differs, budgets, inputs."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wespe.inference import device_memory, staged_tiling, tiles
from wespe.inference import enhance as enhance_module
from wespe.inference.enhance import enhance
from wespe.inference.streamed_tiling import StreamedTiler, instance_norm_indices
from wespe.inference.tiles import choose_tile, receptive_halo
from wespe.models import Generator, InstanceNorm, Stage, inference_view

TOL = 1e-5


def random_generator(seed=0, scale=0.2, he_gain=None, **kwargs):
    """A Generator(**kwargs) with random parameters (built abstractly: no initialiser compilations).

    Default: every parameter ~ N(0, scale^2), so instance-norm statistics matter and outputs are far from 0.5.
    ``he_gain``: kernels ~ N(0, 2 gain / fan_in), norm scales ~ 1 + N(0, 0.3^2), the rest N(0, 0.3^2), so a
    width-64 network keeps O(1) activations (with N(0, 0.2^2) kernels its pre-tanh values reach hundreds and
    float32 rounding alone exceeds 1e-5). BatchNorm running variances ~ U(0.5, 2).
    """
    rng = np.random.default_rng(seed)
    generator = nnx.eval_shape(lambda: Generator(**kwargs))
    state = nnx.state(generator)

    def draw(path, v):
        name = path[-1].key
        if name == "var":
            a = rng.uniform(0.5, 2.0, size=v.shape)
        elif he_gain is None:
            a = rng.normal(size=v.shape) * scale
        elif name == "kernel":
            a = rng.normal(size=v.shape) * np.sqrt(2 * he_gain / np.prod(v.shape[:-1]))
        else:
            a = (name == "scale") + 0.3 * rng.normal(size=v.shape)
        return jnp.asarray(a, jnp.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
    nnx.update(generator, state)
    return generator


@pytest.fixture(scope="module")
def small():
    return random_generator(width=8, num_blocks=2)


def image(h, w, seed=0, n=None):
    shape = (h, w, 3) if n is None else (n, h, w, 3)
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@nnx.jit
def _call(generator, x):
    return generator(x)


def whole(generator, x):
    """The plain generator call on the whole image (HxWx3 or NxHxWx3)."""
    out = np.asarray(_call(generator, jnp.asarray(x if x.ndim == 4 else x[None])))
    return out if x.ndim == 4 else out[0]


def _cases():
    # Hand-picked edge cases: 1x1, 1xN, Nx1, smaller than the halo (14 here), tile 1, tile > image, odd sizes,
    # a long thin image; then seeded random sizes with tiles from a small set (shared compilations).
    cases = [(1, 1, 1), (1, 1, 5), (1, 9, 3), (11, 1, 5), (5, 6, 1), (3, 2, 64), (2000, 7, 300)]
    rng = np.random.default_rng(1234)
    for _ in range(2):
        cases.append((int(rng.integers(1, 48)), int(rng.integers(1, 48)), int(rng.choice([1, 5, 16]))))
    return cases


@pytest.mark.parametrize("tiling", ["staged", "streamed"])
def test_tiled_equals_whole(small, tiling):
    """Both exact methods; tile side 1 makes the staged tiler's in-place stages wait the most tile rows."""
    worst = 0.0
    for i, (h, w, tile) in enumerate(_cases()):
        x = image(h, w, seed=i)
        ref = enhance(small, x)  # fits the default budget: the plain whole-image pass
        out = enhance(small, x, tile=tile, tiling=tiling)
        assert out.shape == x.shape and out.dtype == np.float32
        err = float(np.max(np.abs(out - ref)))
        worst = max(worst, err)
        assert err <= TOL, (h, w, tile, err)
    print(f"worst tiled-vs-whole difference {worst:.3g}")


@pytest.fixture
def tiled(monkeypatch):
    """The tile cores of every tiled run enhance makes in the test (an empty list: whole-image passes only);
    ``cores.methods`` says which tiler ran each."""
    class Cores(list):
        methods = []
        spills = []  # the staged tiler's spilled buffers, per staged run

    cores = Cores()

    def spy(base, method):
        class Spy(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                cores.append(self.core)
                cores.methods.append(method)
                if method == "staged":
                    cores.spills.append(tuple(kwargs.get("spill", ())))
        return Spy

    monkeypatch.setattr(enhance_module, "StreamedTiler", spy(StreamedTiler, "streamed"))
    monkeypatch.setattr(staged_tiling, "StagedTiler", spy(staged_tiling.StagedTiler, "staged"))
    return cores


def test_one_pass_rectangular_tiles_and_budgets(small, tiled, monkeypatch):
    x = image(80, 60, seed=3)
    ref = enhance(small, x)
    assert tiled == []  # fits the default budget: one pass, the plain generator call
    np.testing.assert_allclose(ref, whole(small, x), atol=TOL)
    assert np.max(np.abs(enhance(small, x, tile=(5, 16)) - ref)) <= TOL
    # A budget too small for the whole image picks tiles itself: as an argument or from the environment.
    half_mb = 0.5 * enhance_module.whole_image_bytes(small, (1, 80, 60, 3)) / 2 ** 20
    assert np.max(np.abs(enhance(small, x, memory_budget_mb=half_mb) - ref)) <= TOL
    monkeypatch.setenv(device_memory.MEMORY_BUDGET_ENV, str(half_mb))
    assert np.max(np.abs(enhance(small, x) - ref)) <= TOL
    assert len(tiled) == 3 and tiled[1] == tiled[2] and tiled[1] < (80, 60)


def test_whole_image_exactly_when_its_compiled_program_fits(small, tiled, monkeypatch):
    """The whole-vs-tiled decision uses XLA's memory analysis of the whole-image program; without a budget
    argument or environment variable the budget is the machine's (wespe.inference.device_memory)."""
    monkeypatch.delenv(device_memory.MEMORY_BUDGET_ENV, raising=False)
    x = image(40, 30, seed=11)
    ref = whole(small, x)
    need = enhance_module.whole_image_bytes(small, (1, 40, 30, 3))
    assert need > 2 * x.nbytes  # temporaries, input and output
    np.testing.assert_allclose(enhance(small, x, memory_budget_mb=1.01 * need / 2 ** 20), ref, atol=TOL)
    assert tiled == []
    assert np.max(np.abs(enhance(small, x, memory_budget_mb=0.99 * need / 2 ** 20) - ref)) <= TOL
    assert len(tiled) == 1
    monkeypatch.setattr(device_memory, "machine_budget_bytes", lambda device: int(0.5 * need))
    assert np.max(np.abs(enhance(small, x) - ref)) <= TOL
    assert len(tiled) == 2
    monkeypatch.setattr(device_memory, "machine_budget_bytes", lambda device: 10 * need)
    enhance(small, x)
    assert len(tiled) == 2
    monkeypatch.setenv(device_memory.MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="WESPE_ENHANCE_MEMORY_MB"):
        enhance(small, x)


def test_auto_tiling_is_staged_when_its_buffers_fit(small, tiled, monkeypatch):
    """``tiling='auto'`` keeps the activations on the host (one pass of work) when the two buffers fit beside
    the tiles in the budget, and falls back to the streamed tiler (recompute, no buffers) when they do not."""
    x = image(40, 30, seed=12)
    ref = whole(small, x)
    buffers = tiles.staged_buffer_bytes(small, (1, 40, 30, 3), (10, 10))
    assert buffers == 2 * 8 * 4 * (40 + 2 * 6) * (30 + 2 * 6)  # width 8, largest halo 6 (the output stage)
    assert np.max(np.abs(enhance(small, x, tile=10) - ref)) <= TOL
    monkeypatch.setattr(tiles, "staged_buffer_bytes", lambda *args: 10 ** 15)  # buffers far beyond any budget
    assert np.max(np.abs(enhance(small, x, tile=10) - ref)) <= TOL
    assert np.max(np.abs(enhance(small, x, tile=10, tiling="staged") - ref)) <= TOL  # forced: runs anyway
    assert tiled.methods == ["staged", "streamed", "staged"]
    with pytest.raises(ValueError, match="tiling"):
        enhance(small, x, tile=10, tiling="fast")


def test_staged_buffers_spill_to_a_file_when_the_budget_cannot_hold_them(small, tiled, monkeypatch):
    """Buffers that do not fit the budget beside the tiles go to a temporary file, A first, then H too; with no
    room in the temporary folder either, the streamed tiler runs. The result is the same in every case."""
    x = image(40, 30, seed=14)
    ref = whole(small, x)
    budget_mb = 4.0
    budget = budget_mb * 2 ** 20
    for buffers in (0.5 * budget, 1.2 * budget, 3 * budget):  # fits; half fits; neither half fits
        monkeypatch.setattr(tiles, "staged_buffer_bytes", lambda *args, b=buffers: int(b))
        assert np.max(np.abs(enhance(small, x, tile=10, memory_budget_mb=budget_mb) - ref)) <= TOL
    assert tiled.methods == ["staged"] * 3 and tiled.spills == [(), ("A",), ("H", "A")]
    monkeypatch.setattr(tiles.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
    assert np.max(np.abs(enhance(small, x, tile=10, memory_budget_mb=budget_mb) - ref)) <= TOL
    assert tiled.methods[-1] == "streamed"


@pytest.mark.parametrize("spill", [("A",), ("H", "A")])
def test_spilled_buffers_give_bit_identical_results(small, spill):
    """A file-backed buffer (pread/pwrite, sparse zeros) is the in-memory one, bit for bit: two samples, tiles
    that do not divide the image, in-place stages with one tile row of lag."""
    g = inference_view(small)
    x = image(23, 29, seed=15, n=2)
    ref = staged_tiling.StagedTiler(g, x, (7, 8), 3, jax.devices()[:1]).output()
    out = staged_tiling.StagedTiler(g, x, (7, 8), 3, jax.devices()[:1], spill=spill).output()
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="only the buffers H and A"):
        staged_tiling.StagedTiler(g, x, (7, 8), 3, jax.devices()[:1], spill=("x",))


def test_staged_stages_and_statistics(small):
    """The generator's stages (staged_tiling's docstring), and each stage's statistics equal the whole image's norm
    input."""
    assert small.stages() == (Stage(None, 0, 5), Stage(0, 1, 1), Stage(1, 2, 1), Stage(2, 3, 1), Stage(3, None, 6))
    g = inference_view(small)
    x = image(19, 23, seed=13, n=2)
    tiler = staged_tiling.StagedTiler(g, x, (6, 5), 4, jax.devices()[:1])
    tiler.output()
    mask = jnp.ones((2, 19, 23, 1), bool)
    means, variances = ([jnp.asarray(s[k][:, None, None, :]) for k in range(4)] for s in (tiler.means, tiler.variances))
    for k in range(4):
        a = g.forward(jnp.asarray(x), mask=mask, means=means, variances=variances, stop_at=k)
        mean, var = InstanceNorm.statistics(a)
        np.testing.assert_allclose(tiler.means[k], mean[:, 0, 0], atol=1e-5)
        np.testing.assert_allclose(tiler.variances[k], var[:, 0, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_blocks", [1, 3])
def test_other_block_counts_tile_exactly_with_halos_from_the_stages(num_blocks):
    """The halos both tilers use come from the generator's one stage description: change the generator (here its
    number of blocks) and both still tile exactly."""
    g = random_generator(seed=num_blocks, width=4, num_blocks=num_blocks)
    stages = g.stages()
    assert [(s.applies, s.produces) for s in stages] == [(None, 0), *((k, k + 1) for k in range(2 * num_blocks - 1)),
                                                          (2 * num_blocks - 1, None)]
    assert receptive_halo(g) == sum(s.radius for s in stages) == 10 + 2 * num_blocks
    assert [receptive_halo(g, k) for k in range(2 * num_blocks)] == [5 + k for k in range(2 * num_blocks)]
    assert tiles.max_stage_halo(g) == 6
    x = image(21, 17, seed=num_blocks)
    ref = whole(g, x)
    for tiling in ("staged", "streamed"):
        assert np.max(np.abs(enhance(g, x, tile=6, tiling=tiling) - ref)) <= TOL, tiling


def test_naive_tiling_differs(small):
    """Each tile run through the generator on its own (own statistics, same halo) is visibly wrong:
    the equality tests above are sensitive."""
    x = image(40, 40, seed=5)
    ref = enhance(small, x)
    halo, t = receptive_halo(small), 20
    naive = np.zeros_like(ref)
    for y in range(0, 40, t):
        for z in range(0, 40, t):
            y0, z0 = max(y - halo, 0), max(z - halo, 0)
            out = whole(small, x[y0:y + t + halo, z0:z + t + halo])
            naive[y:y + t, z:z + t] = out[y - y0:y - y0 + t, z - z0:z - z0 + t]
    assert np.max(np.abs(naive - ref)) > 0.05
    assert np.max(np.abs(enhance(small, x, tile=t) - ref)) <= TOL


def test_default_generator_tiled():
    g = random_generator(he_gain=0.5)
    assert receptive_halo(g) == 18 and len(instance_norm_indices(g)) == 8
    x = image(64, 80, seed=7)
    ref = enhance(g, x)
    assert ref.std() > 0.1
    assert np.max(np.abs(enhance(g, x, tile=24) - ref)) <= TOL


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_other_norms(norm):
    g = random_generator(seed=1, width=8, num_blocks=2, norm=norm)  # BatchNorm: random running averages
    assert instance_norm_indices(g) == []
    x = image(23, 31, seed=2)
    ref = whole(nnx.view(g, only=nnx.BatchNorm, use_running_average=True) if norm == "batch" else g, x)
    np.testing.assert_allclose(enhance(g, x), ref, atol=TOL)
    assert np.max(np.abs(enhance(g, x, tile=5) - ref)) <= TOL


def test_windowed_forward_mirrors_generator(small):
    x = jnp.asarray(image(9, 11, seed=4))[None]
    mask = jnp.ones((1, 9, 11, 1), bool)
    norms = instance_norm_indices(small)
    means, variances = [None] * len(norms), [None] * len(norms)
    # Feed each norm the statistics of its own (whole-image) input, found by stopping there.
    for k in norms:
        a = small.forward(x, mask=mask, means=means, variances=variances, stop_at=k)
        means[k], variances[k] = small.blocks[k // 2].norm1.statistics(a)
    np.testing.assert_allclose(small.forward(x, mask=mask, means=means, variances=variances), small(x), atol=TOL)


def test_uint8_and_batched(small, monkeypatch):
    x8 = (image(13, 17, seed=8) * 255).astype(np.uint8)
    np.testing.assert_allclose(enhance(small, x8), whole(small, x8.astype(np.float32) / 255), atol=TOL)

    xb = image(13, 17, seed=9, n=3)  # per-sample statistics: each image is normalised on its own
    refb = whole(small, xb)
    outb = enhance(small, xb, tile=5)
    assert outb.shape == xb.shape and outb.dtype == np.float32
    assert np.max(np.abs(outb - refb)) <= TOL
    assert np.max(np.abs(enhance(small, xb[1]) - refb[1])) <= TOL
    # A budget for one image but not three: whole images one at a time, no tiling.
    monkeypatch.setattr(enhance_module, "StreamedTiler", None)
    monkeypatch.setattr(staged_tiling, "StagedTiler", None)
    one_image_mb = enhance_module.whole_image_bytes(small, (1, 13, 17, 3)) / 2 ** 20
    np.testing.assert_allclose(enhance(small, xb, memory_budget_mb=1.5 * one_image_mb), refb, atol=TOL)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4)), "H x W x 3"),
    (np.zeros((1, 1, 4, 4, 3)), "H x W x 3"),
    (np.zeros((4, 4, 1)), "3-channel"),
    (np.zeros((0, 4, 3)), "empty"),
    (np.zeros((2, 4, 0, 3)), "empty"),
    (np.full((4, 4, 3), np.nan), "NaN"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
])
def test_bad_input(small, bad, match):
    with pytest.raises(ValueError, match=match):
        enhance(small, bad)


def test_bad_options(small):
    x = image(4, 4)
    for tile in (0, -3, (4, 0), 2.5, "8"):
        with pytest.raises(ValueError, match="tile"):
            enhance(small, x, tile=tile)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        enhance(small, x, memory_budget_mb=0)


def test_choose_tile():
    assert choose_tile(10, 10, 18, 1e12, 100) == (10, 10)  # capped at the image
    th, tw = choose_tile(100_000, 300, 18, 1024 * 2 ** 20, 2048)
    assert tw == 300 and th > 300 and (th + 36) * (tw + 36) * 2048 <= 1024 * 2 ** 20  # long tile, within budget
    assert choose_tile(5000, 5000, 18, 1.0, 2048) == (1, 1)  # tiny budget: still makes progress


def test_even_tiles_and_balanced_batches():
    assert tiles.even_tiles((512, 512), 866, 1155) == (433, 385)  # 2 x 3 tiles, none mostly past the image
    assert tiles.even_tiles((512, 512), 300, 1024) == (300, 512)
    assert tiles.even_tiles((1, 7), 5, 20) == (1, 7)
    assert tiles.tiles_per_batch(6, 8, 1) == 6  # one batch, no tile computed twice
    assert tiles.tiles_per_batch(12, 8, 1) == 6  # two even batches, not 8 + 4
    assert tiles.tiles_per_batch(5, 8, 2) == 6  # a multiple of the devices
    assert tiles.tiles_per_batch(100, 1, 4) == 4  # at least one tile per device


def test_two_devices():
    """Tiles sharded over two (virtual CPU) devices give the same result."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from wespe.inference.enhance import enhance
        from wespe.models import Generator
        assert len(jax.devices()) == 2
        g = nnx.eval_shape(lambda: Generator(width=8, num_blocks=1))
        rng = np.random.default_rng(0)
        nnx.update(g, jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape) * 0.2, jnp.float32),
                                   nnx.state(g)))
        x = rng.uniform(size=(21, 19, 3)).astype(np.float32)
        err = np.max(np.abs(enhance(g, x, tile=4) - enhance(g, x)))
        assert err <= 1e-5, err
        print("ok", err)
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu",  # with the suite's XLA_FLAGS for subprocesses (tests/conftest.py)
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_bfloat16_compute_close_to_float32():
    """bf16 activations (f32 parameters and statistics) stay within bf16 rounding of the f32 result, tiled too."""
    g = random_generator(width=8, num_blocks=1)
    x = np.random.default_rng(0).random((29, 33, 3)).astype(np.float32)
    ref = enhance(g, x)
    for tile in (None, 12):
        out = enhance(g, x, tile=tile, compute_dtype="bfloat16")
        assert out.dtype == np.float32 and out.shape == x.shape
        err = np.abs(out - ref)
        assert 0 < err.max() < 0.1 and err.mean() < 1e-2, (err.max(), err.mean())  # > 0: bf16 really was used
    with pytest.raises(ValueError, match="dtype"):
        enhance(g, x, compute_dtype="float16")


@pytest.mark.parametrize("global_color", ["affine", "base_affine"])
def test_residual_generator_with_global_colour_tiles_exactly(global_color):
    """wespe_plus's generator (residual output, colour path) through the exact tiled path. With no residual
    blocks the convolutions' halo (10 px) is below the base layer's blur radius: the halo must grow to it."""
    for blocks in (2, 0):
        g = random_generator(seed=5, width=8, num_blocks=blocks, output="residual", global_color=global_color)
        g.color_matrix[...] = jnp.asarray([[1.5, 0.1, 0.0], [0.0, 2.0, 0.0], [0.2, 0.0, 2.4]], jnp.float32)
        x = image(37, 29, seed=6)
        ref = whole(g, x)
        np.testing.assert_allclose(enhance(g, x), ref, atol=TOL)
        assert np.max(np.abs(enhance(g, x, tile=7) - ref)) <= TOL
