"""Scale-out: mesh rules, sharded steps vs the single-device step, restores across device counts, two processes.

Multi-device checks run in subprocesses with forced CPU devices (tests/sharding_worker.py, launch/train.py
--num_cpu_devices), so the rest of the suite keeps its single CPU device.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import script_server
from PIL import Image

from wespe import parallel

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "sharding_worker.py"


# XLA:CPU without its expensive passes: a third less compile time (a sharded-step worker 57 -> 38 s). For tests
# whose comparisons are within programs compiled alike (restores, two processes vs one) or hold for any summation
# order (the sharded steps below, but for OPTIMIZED_STEP_CASES, compiled as training does).
CHEAP_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The same with LLVM at level 1 (tests/conftest.py's SUBPROCESS_XLA_FLAGS, set here again as _env replaces
# XLA_FLAGS; a JAX_DISABLE_MOST_OPTIMIZATIONS the caller set is removed, as it would force level 0), for the tests
# that run training steps: compiles as fast (the two-process test's
# one-process run, 4 devices: state built in 4.2 vs 4.4 s, first step 11.8 vs 15.0 s) but runs the step ~10x
# faster (0.37 vs 4 s a step at batch 8, 32 px; full optimisation: 0.28 s, but 17 s to build the state).
CHEAP_COMPILE_FAST_STEPS = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"


def _env(cheap_compile: bool = False, fast_steps: bool = False):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if cheap_compile:
        # with the suite's faster-compiling fusion code generator where this jaxlib has it (tests/conftest.py)
        env["XLA_FLAGS"] = " ".join([CHEAP_COMPILE_FAST_STEPS if fast_steps else CHEAP_COMPILE,
                                     os.environ.get("WESPE_TESTS_COMPILE_FAST_FLAGS", "")]).strip()
        if fast_steps:
            env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
    return env


def _worker(*args, timeout=600, cheap_compile=False, fast_steps=False):
    proc = script_server.run([sys.executable, str(WORKER), *args], env=_env(cheap_compile, fast_steps),
                             timeout=timeout, cwd=ROOT)  # forked from a warm server: as a subprocess, ~4 s sooner
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------- mesh rules

@pytest.mark.parametrize("sizes, devices, expected", [
    ({"data": -1}, 8, (8, 1)), ({"data": -1, "fsdp": 2}, 8, (4, 2)), ({"data": 2, "fsdp": -1}, 8, (2, 4)),
    ({"data": 1, "fsdp": 1}, 1, (1, 1)), ({"data": 4}, 4, (4, 1))])
def test_mesh_shape_fills_the_rest(sizes, devices, expected):
    assert parallel.mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize("sizes, devices, message", [
    ({"data": -1, "fsdp": -1}, 8, "only one axis may be -1"),
    ({"data": 3}, 8, "needs 3 devices, but there are 8"),
    ({"data": -1, "fsdp": 3}, 8, "8 devices do not divide by 3"),
    ({"data": 0}, 8, "sizes must be >= 1"),
    ({"model": 2}, 8, "unknown axes"),
])
def test_mesh_shape_errors_name_the_config_key(sizes, devices, message):
    with pytest.raises(parallel.MeshError, match=message) as e:
        parallel.mesh_shape(sizes, devices)
    assert "config.mesh" in str(e.value)


def test_fsdp_spec_splits_the_largest_divisible_dimension():
    P = parallel.P
    assert parallel.fsdp_spec((6272, 1024), 4) == P("fsdp")  # dped_fc dense (100 px): 6272 = 4 * 1568
    assert parallel.fsdp_spec((6270, 1024), 4) == P(None, "fsdp")  # only 1024 divides
    assert parallel.fsdp_spec((3, 3, 256, 512), 8) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((64,), 4) == P()  # small: replicated
    assert parallel.fsdp_spec((1023, 1025), 4) == P()  # nothing divides
    assert parallel.fsdp_spec((), 4) == P()
    assert parallel.fsdp_spec((4096, 4096), 1) == P()


def test_check_batch_accepts_multiples_of_the_batch_devices():
    # The error for a batch that does not divide the devices needs several devices: see test_benchmark_cli.
    layout = parallel.Layout(parallel.make_mesh({"data": -1}))
    layout.check_batch(layout.batch_devices * 3)


def test_to_host_returns_numpy_everywhere():
    import jax.numpy as jnp
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones(2),)}
    host = parallel.to_host(tree)
    assert isinstance(host["a"], np.ndarray) and host["a"].tolist() == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------------------------------------------- sharded step

STEP_CASES = {
    # name: (preset, mesh, overrides, FSDP expected)
    "wespe_data8": ("wespe_paper", "data=8", ["generator.init=he"], False),
    "dped_data8": ("dped_code", "data=8", ["generator.init=he"], False),
    "wespe_fsdp": ("wespe_paper", "data=2,fsdp=4", ["generator.init=he"], True),
    # BatchNorm generator: its statistics must be over the global batch, not per device.
    "dped_batchnorm_fsdp": ("dped_code", "data=4,fsdp=2", ["generator.init=he", "generator.norm=batch"], True),
}


# The bound below holds for any summation order, so the programs may be compiled without most of XLA's passes
# (a case 49 -> 37 s; with CHEAP_COMPILE_FAST_STEPS 53 -> 47 s); the case that broke the first, machine-measured
# bound on an AVX-512 CPU (issue 25) is compiled as training compiles it, so the orders the optimised programs
# choose stay checked.
OPTIMIZED_STEP_CASES = ("dped_batchnorm_fsdp",)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.optimized] if c in OPTIMIZED_STEP_CASES else [])
                                  for c in sorted(STEP_CASES)])
def test_sharded_step_equals_single_device_step(case):
    preset, mesh, overrides, fsdp = STEP_CASES[case]
    args = ["--devices=8", "step", f"--preset={preset}", f"--mesh={mesh}"]
    r = _worker(*args, *[f"--set={o}" for o in overrides], cheap_compile=case not in OPTIMIZED_STEP_CASES,
                fast_steps=True)
    assert r["devices"] == 8 and r["devices_per_leaf"] == [8] and r["step"] == [1, 1]
    assert r["init_diff"] == 0.0  # the state is created identically whatever the layout
    if fsdp:
        assert r["sharded_leaves"] > 10, "FSDP did not split any large leaf"
    else:
        assert r["sharded_leaves"] == 0
    # Every loss, accuracy and gradient norm; the optimiser moments (i.e. the gradients of all networks), normwise
    # per network. The sharded program sums the same terms in another order (per-shard partial sums, then an
    # all-reduce; and XLA may pick other convolution kernels for it). Reordering a float32 sum of n terms changes it
    # by about sqrt(n) * u relative to the sum of magnitudes (u = 2**-24 the unit roundoff; n * u is the worst
    # case); the largest reductions are the kernel gradients and batch statistics over batch * patch**2 terms. A
    # factor 8 covers the layers the error passes through: measured 1.9e-6 to 7.9e-6 on an AVX-512 CPU, bound 4.3e-5.
    # A real difference (statistics of one device's rows, a gradient not summed over devices) is at the
    # scale of the values themselves.
    bound = 8 * np.sqrt(r["reduction_terms"]) * 2.0 ** -24
    assert r["metric_rel_diff"] < bound, (r["metrics_single"], r["metrics_sharded"])
    assert r["opt_state_rel_diff"] < bound
    # Parameters: identical updates wherever the gradient is not float noise (see the worker).
    assert r["params_diff"] < 1e-6
    assert r["zero_gradient_count"] < 0.05 * r["num_params"]
    assert r["params_diff_zero_gradient"] <= 2 * r["lr"] + 1e-6
    if "generator.norm=batch" in overrides:
        assert r["batch_stats_leaves"] > 0 and r["batch_stats_diff"] < 1e-6


@pytest.mark.slow
def test_checkpoint_restores_onto_a_different_device_count(tmp_path):
    r = _worker("--devices=8", "restore", f"--workdir={tmp_path}", cheap_compile=True)
    assert [(c["from"], c["to"]) for c in r["cases"]] == [
        ("1 device", "8 devices FSDP"), ("8 devices", "4 devices FSDP"), ("4 devices FSDP", "1 device")]
    for c in r["cases"]:
        assert c["diff"] == 0.0 and c["step"] == 7 and c["metadata"] == {"note": c["from"]}, c
        assert c["device_sets_ok"] and c["shardings_match_like"], c
        assert (c["sharded_leaves"] > 0) == ("FSDP" in c["to"]), c


# ---------------------------------------------------------------------------------------------- two processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photos(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(6):
        blocks = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1)))
        image = blocks * 0.7 + rng.random((64, 64, 3)) * 0.3
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _train_args(tmp_path, workdir, num_steps):
    return [sys.executable, str(ROOT / "launch" / "train.py"), f"--workdir={workdir}",
            f"--source={tmp_path / 'source'}", f"--target={tmp_path / 'target'}", "--config.vgg_weights=random",
            "--config.batch_size=8", "--config.patch_size=32", "--config.generator.width=8",
            "--config.generator.num_blocks=1", "--config.generator.init=he", "--config.discriminator.head=global_pool",
            "--config.content_layer=relu1_2", "--config.log_every=1",
            "--config.sample_every=1000", f"--config.num_steps={num_steps}"]


def _start_two_processes(tmp_path, workdir, num_steps, tag, extra=()):
    port = _free_port()
    procs = []
    for i in range(2):
        cmd = _train_args(tmp_path, workdir, num_steps) + list(extra) + [
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
            "--num_cpu_devices=2", "--cpu_collectives=gloo", "--initialization_timeout=60", "--heartbeat_timeout=15"]
        log = open(tmp_path / f"process{i}_{tag}.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env=_env(cheap_compile=True, fast_steps=True), cwd=ROOT), log))
    return procs


def _wait_all(tmp_path, procs, tag, timeout=300):
    try:
        codes = [p.wait(timeout=timeout) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"process{i}_{tag}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in logs)
    return logs


def _metrics(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpoints(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_two_processes_preempt_resume_and_match_one_process(tmp_path):
    """2 processes x 2 CPU devices (gloo) run launch/train.py; SIGTERM reaches process 1 only, yet both save the
    same step and exit 0; the same command resumes to 2 steps further. Every step's metrics match one process
    on one device run straight through (the same global batches; a 4-device single process, the same mesh size,
    passes the same bounds but takes ~5 s longer to compile)."""
    _photos(tmp_path / "source", 1)
    _photos(tmp_path / "target", 2)
    two = tmp_path / "two"
    procs = _start_two_processes(tmp_path, two, 100000, "first", ["--config.checkpoint_every=1000"])
    deadline = time.monotonic() + 240
    while len(_metrics(two)) < 2:
        if any(p.poll() is not None for p, _ in procs) or time.monotonic() > deadline:
            _wait_all(tmp_path, procs, "first", timeout=1)
            pytest.fail("the two processes stopped or never trained")
        time.sleep(0.1)
    procs[1][0].send_signal(signal.SIGTERM)  # a preemption notice on one host only
    first = _wait_all(tmp_path, procs, "first")
    match = re.search(r"preempted at step (\d+)", first[0])
    assert match, first[0][-3000:]
    saved = int(match.group(1))
    assert "a stop signal on another process" in first[0] and "SIGTERM received" in first[1]
    assert "processes: 2 (explicit flags), devices: 4 cpu" in first[0]
    assert "preempted at step" not in first[1]  # process 0 alone reports
    assert _checkpoints(two) == [saved]

    final = saved + 2
    second = _wait_all(tmp_path, _start_two_processes(tmp_path, two, final, "second"), "second")
    assert f"resumed {two} at step {saved}" in second[0] and f"finished at step {final}" in second[0]
    assert _checkpoints(two)[-1] == final

    reference = script_server.run(_train_args(tmp_path, tmp_path / "one", final),
                                  env=_env(cheap_compile=True, fast_steps=True), cwd=ROOT, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    one, both = _metrics(tmp_path / "one"), _metrics(two)
    assert [m["step"] for m in both] == list(range(1, final + 1)) == [m["step"] for m in one]
    for a, b in zip(one, both):
        keys = [k for k in a if k not in ("step", "time")]
        assert set(keys) == {k for k in b if k not in ("step", "time")}
        diff = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in keys)
        # Step 1 differs only by reduction order: within the bound derived in
        # test_sharded_step_equals_single_device_step (8 sqrt(n) u, n = batch * patch**2 = 8 * 32**2); later steps
        # also by Adam's +-lr moves of zero-gradient parameters: ~5e-4 by step 4 when measured.
        assert diff < (8 * np.sqrt(8 * 32 ** 2) * 2.0 ** -24 if a["step"] == 1 else 2e-2), (a["step"], diff)


# ---------------------------------------------------------------------------------------------- start-up

_LAUNCHER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                  "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST", "TPU_SKIP_MDS_QUERY")


def test_cluster_detection_follows_the_launcher_environment(monkeypatch):
    for var in _LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert parallel.detected_cluster() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # inside an sbatch script but outside srun: not a multi-process step
    assert parallel.detected_cluster() is None
    for var, value in [("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "node[1-2]"), ("SLURM_NTASKS", "2"),
                       ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]:
        monkeypatch.setenv(var, value)
    assert parallel.detected_cluster() == "SlurmCluster"
    for var in _LAUNCHER_VARS[:5]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.1:5000")
    assert parallel.detected_cluster() == "OmpiCluster"


def test_start_up_flags_are_checked_and_one_process_needs_no_coordinator(monkeypatch):
    with pytest.raises(parallel.MeshError, match="--process_id=2 is not in"):
        parallel.initialize_distributed("127.0.0.1:1", 2, 2)
    with pytest.raises(parallel.MeshError, match="--num_processes must be >= 1"):
        parallel.initialize_distributed(None, 0, None)
    # Inside a (fake) srun step of 4 tasks, --num_processes=1 runs alone instead of waiting for the other tasks.
    for var, value in [("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "n1"), ("SLURM_NTASKS", "4"),
                       ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]:
        monkeypatch.setenv(var, value)
    assert parallel.detected_cluster() == "SlurmCluster"
    summary = parallel.initialize_distributed(num_processes=1)
    assert summary["how"] == "single process" and summary["process_count"] == 1
