"""launch/benchmark.py end to end on tiny networks (speed itself is never asserted: benchmarks, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--config.generator.width=8", "--config.generator.num_blocks=1", "--config.patch_size=32",
        "--config.discriminator.head=global_pool", "--config.content_layer=relu1_2", "--repeats=2"]


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(ROOT / "launch" / "benchmark.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


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


def test_train_step_mode_bfloat16_and_bad_device_count():
    proc = _run("--config.compute_dtype=bfloat16", "--config.batch_size=2", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["compute_dtype"] == "bfloat16" and result["num_devices"] == 1 and result["finite"]
    assert result["mfu"] is None  # no known peak for a CPU, none given

    proc = _run("--mode=scaling", "--devices=1,4", *TINY)
    assert proc.returncode != 0
    assert "--devices=1,4: [4] not between 1 and the 1 devices" in proc.stderr and "--num_cpu_devices" in proc.stderr
