"""Runs in a subprocess with several forced CPU devices (tests/test_parallel.py starts it): compares sharded
training steps with the single-device step, and checkpoint restores across device counts. Prints one JSON line.

    python tests/sharding_worker.py --devices=8 step --preset=wespe_paper --mesh=data=8
    python tests/sharding_worker.py --devices=8 restore --workdir=/tmp/x
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def tiny_config(preset: str, overrides: list[str]):
    from wespe import config as configs
    c = configs.preset(preset)
    c.vgg_weights = "random"
    c.batch_size, c.patch_size = 8, 32
    c.generator.width, c.generator.num_blocks = 8, 1
    c.content_layer = "relu2_2"
    c.discriminator.head = "dped_fc"  # the large dense leaf (512 x 1024 at 32 px) that FSDP splits
    for item in overrides:
        key, value = item.split("=", 1)
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = type(target[leaf])(value) if not isinstance(target[leaf], str) else value
    return c


def parse_mesh(text: str) -> dict:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def max_abs_diff(a, b) -> float:
    import jax
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                                       - np.asarray(y, np.float64)), initial=0)),
                                         a, b))
    return max(diffs, default=0.0)


def moments_rel_diff(opt_1, opt_n) -> float:
    """The largest difference of Adam's first and second moments (i.e. of the gradients and their squares), per
    network relative to that network's largest moment: a normwise error, the form in which float reordering
    bounds are stated (an element-wise relative error is unbounded where a gradient is near zero)."""
    import jax
    worst = 0.0
    for group in opt_1:
        adam_1, adam_n = opt_1[group][0], opt_n[group][0]
        for moment in ("mu", "nu"):
            for name in getattr(adam_1, moment):
                a = [np.asarray(x, np.float64) for x in jax.tree.leaves(getattr(adam_1, moment)[name])]
                b = [np.asarray(x, np.float64) for x in jax.tree.leaves(getattr(adam_n, moment)[name])]
                scale = max(float(np.abs(x).max(initial=0)) for x in a)
                diff = max(float(np.abs(x - y).max(initial=0)) for x, y in zip(a, b))
                worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def run_steps(config, layout, batches):
    import jax

    from wespe import train_step
    state, graphdefs = train_step.create_train_state(config, layout)
    init = jax.tree.map(np.asarray, jax.device_get(state))
    weights, pre = train_step.load_content_network(config)
    step = train_step.make_train_step(config, graphdefs, weights, pre, layout)
    metrics = []
    for i, batch in enumerate(batches):
        state, m = step(state, {k: np.asarray(v) for k, v in batch.items()}, jax.random.key(i))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    sharded = sum(1 for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated)
    shards = {x.sharding.num_devices for x in jax.tree.leaves(state)}
    return init, jax.tree.map(np.asarray, jax.device_get(state)), metrics, sharded, sorted(shards)


def cmd_step(args) -> dict:
    import jax

    from wespe import parallel
    config = tiny_config(args.preset, args.set)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.patch_size, config.patch_size, 3)
    batches = []
    for _ in range(args.steps):
        source = rng.random(shape, dtype=np.float32)
        batches.append({"source": source, "target": np.clip(source[..., ::-1] * 1.2 - 0.1, 0, 1)})
    single = parallel.Layout(parallel.make_mesh({"data": 1}, jax.devices()[:1]))
    multi = parallel.Layout(parallel.make_mesh(parse_mesh(args.mesh)))
    init_1, state_1, metrics_1, _, _ = run_steps(config, single, batches)
    init_n, state_n, metrics_n, sharded, devices = run_steps(config, multi, batches)
    metric_diff = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for a, b in zip(metrics_1, metrics_n) for k in a)
    # Adam's first update is lr * g / (|g| + eps): about +-lr whatever |g|, so a parameter whose gradient is only
    # float noise (e.g. a discriminator conv bias when LeakyReLU is linear over the whole channel and instance norm
    # then removes it: |g| ~ 1e-7 of the network's largest) moves by +-lr with a sign that depends on reduction
    # order. Those are compared separately; every other parameter must get the same update.
    b1 = config.optimizer.b1
    grads = {**state_1.opt_state["generators"][0].mu, **state_1.opt_state["discriminators"][0].mu}
    exact, noise, n_noise, by_network = 0.0, 0.0, 0, {}
    for name in state_1.params:
        g = jax.tree.map(lambda m: np.abs(np.asarray(m)) / (1 - b1), grads[name])
        scale = max(float(x.max(initial=0)) for x in jax.tree.leaves(g))
        for gi, a, b in zip(jax.tree.leaves(g), jax.tree.leaves(state_1.params[name]),
                            jax.tree.leaves(state_n.params[name])):
            is_noise = gi < 1e-5 * scale
            d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
            exact = max(exact, float(d[~is_noise].max(initial=0)))
            noise = max(noise, float(d[is_noise].max(initial=0)))
            n_noise += int(is_noise.sum())
            by_network[name] = by_network.get(name, 0) + int(is_noise.sum())
    return {"devices": jax.device_count(), "mesh": dict(multi.mesh.shape), "sharded_leaves": sharded,
            "devices_per_leaf": devices, "init_diff": max_abs_diff(init_1, init_n),
            "metric_rel_diff": metric_diff, "metrics_single": metrics_1[-1], "metrics_sharded": metrics_n[-1],
            "params_diff": exact, "params_diff_zero_gradient": noise, "zero_gradient_count": n_noise,
            "zero_gradient_by_network": by_network,
            "num_params": sum(int(np.size(x)) for x in jax.tree.leaves(state_1.params)),
            "opt_state_rel_diff": moments_rel_diff(state_1.opt_state, state_n.opt_state),
            "reduction_terms": config.batch_size * config.patch_size ** 2,
            "batch_stats_diff": max_abs_diff(state_1.batch_stats, state_n.batch_stats),
            "batch_stats_leaves": len(jax.tree.leaves(state_1.batch_stats)),
            "lr": max(config.optimizer.lr_generator, config.optimizer.lr_discriminator),
            "step": [int(state_1.step), int(state_n.step)]}


def cmd_restore(args) -> dict:
    """Save from one mesh, restore onto others: values bit-identical, shardings those of the new mesh."""
    import jax

    from wespe import parallel, train_step
    from wespe.checkpoint import Checkpointer
    config = tiny_config("wespe_paper", [])
    devices = jax.devices()
    cases = [("1 device", {"data": 1}, devices[:1], f"{len(devices)} devices FSDP", {"data": -1, "fsdp": 4}, devices),
             (f"{len(devices)} devices", {"data": -1}, devices, "4 devices FSDP", {"data": 1, "fsdp": 4}, devices[:4]),
             ("4 devices FSDP", {"data": 1, "fsdp": 4}, devices[:4], "1 device", {"data": 1}, devices[:1])]
    out = []
    for i, (from_name, from_mesh, from_devices, to_name, to_mesh, to_devices) in enumerate(cases):
        src = parallel.Layout(parallel.make_mesh(from_mesh, from_devices))
        dst = parallel.Layout(parallel.make_mesh(to_mesh, to_devices))
        state, _ = train_step.create_train_state(config, src)
        state = state.replace(step=state.step + 7)  # something a fresh state would not have
        saved = jax.tree.map(np.asarray, jax.device_get(state))
        with Checkpointer(Path(args.workdir) / str(i), async_save=False) as ckpt:
            ckpt.save(7, state, {"note": from_name})
        like, _ = train_step.create_train_state(config, dst)
        with Checkpointer(Path(args.workdir) / str(i), read_only=True) as ckpt:
            restored, meta = ckpt.restore(like=like)
        leaves = jax.tree.leaves(restored)
        out.append({"from": from_name, "to": to_name, "diff": max_abs_diff(saved, jax.device_get(restored)),
                    "step": int(restored.step), "metadata": meta,
                    "device_sets_ok": all(set(x.sharding.device_set) == set(to_devices) for x in leaves),
                    "shardings_match_like": all(a.sharding == b.sharding
                                                for a, b in zip(leaves, jax.tree.leaves(like))),
                    "sharded_leaves": sum(1 for x in leaves if not x.sharding.is_fully_replicated)})
    return {"devices": len(devices), "cases": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=8)
    sub = parser.add_subparsers(dest="cmd", required=True)
    step = sub.add_parser("step")
    step.add_argument("--preset", default="wespe_paper")
    step.add_argument("--mesh", default="data=-1")
    step.add_argument("--steps", type=int, default=1)
    step.add_argument("--set", action="append", default=[], help="config overrides key=value")
    restore = sub.add_parser("restore")
    restore.add_argument("--workdir", required=True)
    args = parser.parse_args()

    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    result = cmd_step(args) if args.cmd == "step" else cmd_restore(args)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
