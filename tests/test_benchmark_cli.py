"""launch/benchmark.py end to end on tiny networks (speed itself is never asserted: benchmarks, not tests)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import script_server

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--config.generator.width=8", "--config.generator.num_blocks=1", "--config.patch_size=32",
        "--config.discriminator.head=global_pool", "--config.content_layer=relu1_2", "--repeats=2"]


def _run(*args):
    # The suite's compilation cache and its XLA flags for subprocesses (tests/conftest.py): these tests check the
    # plumbing, not the speed. LLVM at level 1 compiles as fast as level 0, but the tiny step each run times
    # (warmup + repeats) takes ~0.3 s, not 4.1 s (launch/benchmark.py at batch 2: 46 -> 16 s).
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return script_server.run([sys.executable, str(ROOT / "launch" / "benchmark.py"), *args], env=env, cwd=ROOT,
                             timeout=600)


def test_scaling_mode_reports_throughput_flops_and_mfu(tmp_path):
    out = tmp_path / "scaling.json"
    proc = _run("--mode=scaling", "--devices=1,2", "--per_device_batch=2", "--num_cpu_devices=2",
                "--peak_tflops=0.5", f"--out={out}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["num_devices"] for r in rows] == [1, 2] and [r["batch_size"] for r in rows] == [2, 4]
    assert [r["mesh"] for r in rows] == [{"data": 1, "fsdp": 1}, {"data": 2, "fsdp": 1}]
    for r in rows:
        assert r["finite"] and r["step_s_median"] > 0 and len(r["step_s_all"]) == 2
        assert abs(r["images_per_s"] - r["batch_size"] / r["step_s_median"]) < 0.01 * r["images_per_s"]
        # XLA counts one device's program; the step's total is that times the devices.
        assert r["flops_per_step"] == r["flops_per_step_per_device"] * r["num_devices"] > 0
        expected_mfu = r["flops_per_step"] / r["step_s_median"] / (0.5e12 * r["num_devices"])
        assert abs(r["mfu"] - expected_mfu) <= 1e-4 + 0.01 * expected_mfu
    # Same per-device batch: the per-device FLOPs barely change with the device count.
    assert abs(rows[1]["flops_per_step_per_device"] / rows[0]["flops_per_step_per_device"] - 1) < 0.05
    assert rows[0]["speedup"] == 1.0 and rows[1]["efficiency"] == round(rows[1]["speedup"] / 2, 3)


def test_train_step_mode_bfloat16_config_file_and_bad_device_count():
    proc = _run("--config=experiments/dped_paired.py", "--config.compute_dtype=bfloat16", "--config.batch_size=2",
                *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["compute_dtype"] == "bfloat16" and result["num_devices"] == 1 and result["finite"]
    assert result["mfu"] is None  # no known peak for a CPU, none given
    assert result["config"].endswith("experiments/dped_paired.py")  # the result names its config file

    proc = _run("--mode=scaling", "--devices=1,4", *TINY)
    assert proc.returncode != 0
    assert "--devices=1,4: [4] not between 1 and the 1 devices" in proc.stderr and "--num_cpu_devices" in proc.stderr

    proc = _run("--config.batch_size=3", "--num_cpu_devices=2", *TINY)  # fails before building anything
    assert proc.returncode != 0
    assert "config.batch_size=3 does not divide over the 2 devices" in proc.stderr



def test_max_batch_mode_end_to_end(tmp_path):
    """Plumbing: a budget nothing reaches, capped at batch 2 (XLA's real estimates, two compiles)."""
    out = tmp_path / "max_batch.json"
    proc = _run("--mode=max_batch", "--memory_limit_gb=64", "--max_batch=2", "--repeats=1", f"--out={out}",
                *TINY[:-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    search, bench = result["search"], result["benchmark"]
    assert search["batch_size"] == 2 and sorted(search["tried"]) == ["1", "2"]
    assert 0 < search["tried"]["1"] < search["tried"]["2"] <= search["budget_bytes"]  # memory grows with the batch
    assert bench["batch_size"] == 2 and bench["finite"]


@pytest.mark.parametrize("unit, budget, expected", [(1, 10 + 3 * 13, 13), (4, 10 + 3 * 13, 12), (1, 10 + 3 * 64, 64),
                                                    (2, 10 + 3 * 100, 64)])
def test_largest_batch_search(monkeypatch, unit, budget, expected):
    """Doubling then bisection on a known memory model (bytes = 10 + 3 * batch), in multiples of the batch devices,
    capped at max_batch=64."""
    from wespe import train_step
    from wespe.evaluation import speed_benchmark

    class FakeLayout:
        batch_devices = unit

        class mesh:
            devices = np.array([type("D", (), {"device_kind": "fake", "memory_stats": lambda self: None})()])

    monkeypatch.setattr(train_step, "abstract_train_state", lambda config: (None, {}))
    monkeypatch.setattr(train_step, "load_content_network", lambda config: ({}, "imagenet"))
    monkeypatch.setattr(train_step, "make_train_step", lambda *args, **kwargs: None)
    monkeypatch.setattr(speed_benchmark, "step_memory_bytes", lambda config, layout, step: 10 + 3 * config.batch_size)
    from wespe import config as configs
    config = configs.base_config()  # every call that reads it is replaced above; only batch_size changes
    result = speed_benchmark.largest_batch(config, FakeLayout(), memory_limit_bytes=budget, fraction=1.0, max_batch=64)
    assert result["batch_size"] == expected
    tried = {int(k) for k in result["tried"]}
    assert all(b % unit == 0 for b in tried)
    assert expected == 64 or expected + unit in tried  # the next batch was tried and did not fit
    with pytest.raises(ValueError, match="reports no memory limit"):
        speed_benchmark.largest_batch(config, FakeLayout())


FAKE_TORCH_STEP = '''
import sys
args = sys.argv[1:]
assert "--tune-malloc" in args and "--layouts" in args, args
batch = int(args[args.index("--batches") + 1])
print("torch 0.0 (stand-in), threads 2")
print(f"batch {batch:3d} channels_last:   {0.5 * batch:.3f} s/step     2.00 img/s  (min 1, max 2)")
'''


def test_torch_ratio_mode_runs_both_steps_and_divides(tmp_path):
    """The side-by-side plumbing, with a stand-in for the PyTorch reference (torch is never a dependency): the
    reference is run per batch size with the same settings, its line parsed, and wespe's median divided by it.
    Also: the config file is named in the result and --config.vgg_weights is not overridden."""
    fake = tmp_path / "torch_step.py"
    fake.write_text(FAKE_TORCH_STEP)
    out = tmp_path / "ratio.json"
    proc = _run("--mode=torch_ratio", "--batch_sizes=2,4", f"--torch_python={sys.executable}",
                f"--torch_script={fake}", f"--out={out}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [2, 4] and [r["torch_step_s"] for r in rows] == [1.0, 2.0]
    for r in rows:
        assert r["ratio"] == round(r["wespe_step_s"] / r["torch_step_s"], 3) and r["wespe"]["finite"]

    proc = _run("--mode=torch_ratio", f"--torch_python={tmp_path / 'missing'}", *TINY)
    assert proc.returncode != 0 and "--torch_python=" in proc.stderr and "no such file" in proc.stderr

    proc = _run("--config.batch_size=2", "--config.vgg_weights=no_such_weights.mat", *TINY)
    assert proc.returncode != 0 and "no_such_weights.mat" in proc.stderr  # the config's key was used


FAKE_TORCH = "__version__ = '0.0-stand-in'\ndef set_num_threads(n): pass\ndef set_flush_denormal(on): pass\n"
FAKE_REFERENCE = '''
def bench_g_forward(h, w, channels_last, warmup=1, iters=5):
    assert channels_last
    return 1e-6 * h * w, [1e-6 * h * w] * iters
'''


def test_enhance_benchmark_tilings_and_torch_forward_side_by_side(tmp_path):
    """In process, tiny generator: both exact tilings and the whole image per size, each tiled time over the
    whole-image time, and the PyTorch reference forward (a stand-in module: torch is never a dependency) run
    in a subprocess per size, its time divided into wespe's whole-image time."""
    from flax import nnx

    from wespe.evaluation import speed_benchmark
    from wespe.models import Generator
    (tmp_path / "torch.py").write_text(FAKE_TORCH)
    (tmp_path / "torch_wespe_step.py").write_text(FAKE_REFERENCE)
    generator = Generator(width=8, num_blocks=1, rngs=nnx.Rngs(0))
    rows = speed_benchmark.benchmark_enhance(generator, [0.002], tile=16, repeats=1, tilings=("staged", "streamed"),
                                          torch_python=sys.executable,
                                          torch_script=str(tmp_path / "torch_wespe_step.py"))
    assert [(r["path"], r.get("tiling")) for r in rows] == [("tiled", "staged"), ("tiled", "streamed"),
                                                            ("whole", None), ("torch", None)]
    h, w = rows[0]["height"], rows[0]["width"]
    assert (h, w) == (38, 52) and all(r["megapixels"] == 0.002 for r in rows)
    whole = rows[2]["seconds_median"]
    for r in rows[:2]:
        assert r["tile"] == 16 and r["vs_whole"] == round(r["seconds_median"] / whole, 3)
    torch_row = rows[3]
    assert torch_row["seconds_median"] == round(1e-6 * h * w, 3) and torch_row["torch"] == "0.0-stand-in"
    assert torch_row["max_rss_bytes"] > 0
    assert rows[2]["vs_torch"] == round(whole / torch_row["seconds_median"], 3)
    with pytest.raises(ValueError, match="--torch_python"):
        speed_benchmark.benchmark_enhance(generator, [0.002], torch_python=str(tmp_path / "nope"),
                                       torch_script=str(tmp_path / "torch_wespe_step.py"))
    # A reference that dies at one size (PyTorch's 12 MP forward is killed for memory on a 24 GiB machine): that
    # row says why, wespe's rows are kept.
    (tmp_path / "torch_wespe_step.py").write_text(FAKE_REFERENCE.replace("assert channels_last",
                                                                         "import os; os._exit(9)"))
    rows = speed_benchmark.benchmark_enhance(generator, [0.002], repeats=1, torch_python=sys.executable,
                                          torch_script=str(tmp_path / "torch_wespe_step.py"))
    assert [r["path"] for r in rows] == ["tiled", "whole", "torch"] and "exited 9" in rows[2]["error"]
    assert "vs_torch" not in rows[1]


def test_suite_runs_every_part_with_its_settings(monkeypatch):
    """benchmark_suite's plan, with each measurement replaced by a recorder (each is tested for real above):
    the step in both dtypes with each dtype's peak, the bf16 largest batch and its step when a memory limit is
    known (skipped with the reason when not), weak scaling over 1, 2, 4, ... devices when there are several,
    and enhance of the config's generator in both dtypes."""
    import jax

    from wespe import config as configs
    from wespe.evaluation import speed_benchmark
    calls = []
    monkeypatch.setattr(speed_benchmark, "benchmark_train_step", lambda c, layout=None, **kw: calls.append(
        ("step", c.compute_dtype, c.batch_size, kw["peak_flops"])) or {"batch_size": c.batch_size})
    monkeypatch.setattr(speed_benchmark, "largest_batch", lambda c, layout, **kw: calls.append(
        ("search", c.compute_dtype, kw["memory_limit_bytes"])) or {"batch_size": 64})
    monkeypatch.setattr(speed_benchmark, "benchmark_scaling", lambda c, counts, per_device, **kw: calls.append(
        ("scaling", counts, per_device)) or [])
    monkeypatch.setattr(speed_benchmark, "benchmark_enhance", lambda g, mp, **kw: calls.append(
        ("enhance", g.width, mp, kw["dtypes"], kw["tile"])) or [])
    config = configs.base_config()
    config.generator.width = 8
    config.batch_size = 12
    peaks = {"float32": 1e12, "bfloat16": 2e12}
    result = speed_benchmark.benchmark_suite(config, megapixels=[1.0, 12.0], tile=64, memory_limit_bytes=2 ** 30,
                                          peak_flops=peaks)
    assert calls == [("step", "float32", 12, 1e12), ("step", "bfloat16", 12, 2e12),
                     ("search", "bfloat16", 2 ** 30), ("step", "bfloat16", 64, 2e12),
                     ("enhance", 8, [1.0, 12.0], ("float32", "bfloat16"), 64)]
    assert result["scaling"] == {"skipped": "one device"} and result["max_batch"]["search"]["batch_size"] == 64
    calls.clear()
    monkeypatch.setattr(jax, "device_count", lambda: 6)
    result = speed_benchmark.benchmark_suite(config, megapixels=[1.0])  # a CPU reports no memory limit
    assert "reports no memory limit" in result["max_batch"]["skipped"]
    assert ("scaling", [1, 2, 4, 6], 2) in calls  # the config's batch over the devices, per device


def test_suite_mode_flags():
    proc = _run("--mode=suite", "--peak_tflops=1", *TINY)
    assert proc.returncode != 0 and "--peak_tflops" in proc.stderr
