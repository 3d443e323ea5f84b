"""Devices, processes and where arrays live: the mesh, distributed start-up and shardings.

wespe uses JAX's own multi-controller runtime: one Python process per host, all running the same program
(``launch/train.py``), joined by :func:`initialize_distributed`, sharing one global :class:`jax.sharding.Mesh`
with two named axes:

``data``   data parallelism: each device along it sees a different slice of the global batch.
``fsdp``   fully-sharded data parallelism: the batch is split over it too, and so are the large parameter and
           optimizer-state leaves (``Layout.state_shardings(fsdp=True)``); XLA gathers them per use.

Mesh sizes come from ``config.mesh`` (``data=-1`` = every device left over). With both axes the batch is split
over ``data * fsdp`` devices; everything else is replicated unless FSDP is on. XLA's SPMD partitioner inserts the
collectives (gradient all-reduce, parameter all-gather), so the step in ``wespe.train_step`` is written once for
every layout and equals the single-device step up to float reduction order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wespe.errors import UserError

logger = logging.getLogger(__name__)

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over both axes
# Leaves smaller than this stay replicated under FSDP: gathering them costs more than keeping them (biases,
# norm scales, small kernels). The DPED discriminator's dense layer (6.4M), VGG-19's and the generators'
# larger kernels are sharded.
FSDP_MIN_ELEMENTS = 2**14


class MeshError(UserError):
    """A mesh or batch layout that does not fit the devices; the message names the config key."""


# -- processes ---------------------------------------------------------------------------------------------------

def detected_cluster() -> str | None:
    """The cluster environment JAX's auto-detection would use (SLURM, Open MPI, Cloud TPU, Kubernetes), or None.

    JAX does not export its detector list; if its layout changes this says ``"unknown"`` and
    :func:`initialize_distributed` leaves the decision to ``jax.distributed.initialize`` itself.
    """
    try:
        from jax._src import clusters
        envs = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return "unknown"
    for env in envs:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception:  # noqa: BLE001 - a detector that cannot run (e.g. no metadata server) is absent
            continue
    return None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
                           num_cpu_devices: int | None = None, cpu_collectives: str | None = None,
                           initialization_timeout_s: int = 300, heartbeat_timeout_s: int = 100) -> dict:
    """Join the processes of a multi-host run (call first, before anything touches a device).

    * Explicit ``coordinator_address`` / ``num_processes`` / ``process_id``: used as given (values left out are
      filled in by JAX's cluster detection where it can).
    * Otherwise, inside SLURM (``srun``), Open MPI (``mpirun``), a Cloud TPU pod or Kubernetes JAX detects all
      three from the environment.
    * Otherwise (a laptop, one GPU box): a single process; nothing to join.

    ``num_cpu_devices`` / ``cpu_collectives`` (``gloo`` or ``mpi``) make CPU-only runs look like multi-device
    ones (tests, trying a pod layout on a laptop). Timeouts are in seconds: a process that dies makes the others
    fail after ``heartbeat_timeout_s``. Returns a summary dict (also logged).
    """
    if num_cpu_devices is not None:
        if num_cpu_devices < 1:
            raise MeshError(f"--num_cpu_devices must be >= 1, got {num_cpu_devices}")
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if num_processes is not None and num_processes < 1:
        raise MeshError(f"--num_processes must be >= 1, got {num_processes}")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise MeshError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
    single = num_processes == 1  # explicit: one process, even inside a cluster allocation
    explicit = not single and (coordinator_address is not None or num_processes is not None or process_id is not None)
    cluster = None if (explicit or single) else detected_cluster()
    how = "explicit flags" if explicit else (cluster or "single process")
    if explicit or cluster is not None:
        try:
            jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                       process_id=process_id, local_device_ids=local_device_ids,
                                       initialization_timeout=int(initialization_timeout_s),
                                       heartbeat_timeout_seconds=int(heartbeat_timeout_s))
        except Exception as e:
            raise RuntimeError(
                f"joining the other processes failed ({how}; coordinator_address={coordinator_address}, "
                f"num_processes={num_processes}, process_id={process_id}): {e}. Every process must run the same "
                f"command (under SLURM: every task started by srun); --num_processes=1 runs a single process "
                f"inside a cluster allocation") from e
    summary = {"how": how,
               "process_index": jax.process_index(), "process_count": jax.process_count(),
               "local_devices": jax.local_device_count(), "devices": jax.device_count(),
               "platform": jax.devices()[0].platform}
    if summary["process_index"] == 0 and summary["process_count"] > 1:  # one process: the loop's mesh line says it
        logger.info("processes: %(process_count)d (%(how)s), devices: %(devices)d %(platform)s "
                    "(%(local_devices)d per process)", summary)
    return summary


# -- mesh --------------------------------------------------------------------------------------------------------

def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in :data:`AXES` order, with one ``-1`` replaced by the devices left over."""
    unknown = [a for a in sizes if a not in AXES]
    if unknown:
        raise MeshError(f"config.mesh has unknown axes {unknown}; the axes are {AXES}")
    values = [int(sizes.get(a, 1)) for a in AXES]
    text = ", ".join(f"{a}={v}" for a, v in zip(AXES, values))
    if values.count(-1) > 1:
        raise MeshError(f"config.mesh ({text}): only one axis may be -1 (the devices left over)")
    if any(v == 0 or v < -1 for v in values):
        raise MeshError(f"config.mesh ({text}): sizes must be >= 1, or -1 for the rest")
    known = math.prod(v for v in values if v != -1)
    if -1 in values:
        if num_devices % known:
            raise MeshError(f"config.mesh ({text}): {num_devices} devices do not divide by {known}")
        values[values.index(-1)] = num_devices // known
    if math.prod(values) != num_devices:
        raise MeshError(f"config.mesh ({text}) needs {math.prod(values)} devices, but there are {num_devices}; "
                        f"set one axis to -1 to use the rest")
    return tuple(values)


def make_mesh(sizes: dict[str, int] | Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp) mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": -1} if sizes is None else dict(sizes)
    shape = mesh_shape(sizes, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_elements: int = FSDP_MIN_ELEMENTS) -> P:
    """Where an FSDP leaf of ``shape`` is split: its largest dimension that divides by the ``fsdp`` axis.

    Leaves smaller than ``min_elements``, or with no dimension divisible by ``fsdp_size``, stay replicated.
    """
    if fsdp_size <= 1 or math.prod(shape) < min_elements:
        return P()
    candidates = [i for i in range(len(shape)) if shape[i] % fsdp_size == 0]
    if not candidates:
        return P()
    dim = max(candidates, key=lambda i: (shape[i], -i))
    return P(*([None] * dim + ["fsdp"]))


@dataclass(frozen=True)
class Layout:
    """Shardings of one run's arrays on ``mesh``: batch split over every device; state replicated, or split over
    ``fsdp`` when that axis has more than one device."""
    mesh: Mesh

    @property
    def fsdp(self) -> bool:
        return self.mesh.shape["fsdp"] > 1

    @property
    def batch_devices(self) -> int:
        return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) dimension split over ``data`` and ``fsdp``."""
        return NamedSharding(self.mesh, P(BATCH_AXES))

    def state_shardings(self, tree: Any) -> Any:
        """A sharding per leaf of ``tree`` (arrays or ShapeDtypeStructs): replicated, or FSDP-split."""
        size = self.mesh.shape["fsdp"]

        def one(leaf):
            return NamedSharding(self.mesh, fsdp_spec(getattr(leaf, "shape", ()), size))

        return jax.tree.map(one, tree)

    def check_batch(self, global_batch: int, key: str = "config.batch_size") -> None:
        """A global batch that does not split evenly over the batch devices and processes is an error."""
        if global_batch % self.batch_devices:
            raise MeshError(f"{key}={global_batch} does not divide over the {self.batch_devices} devices the batch "
                            f"is split over (mesh {dict(self.mesh.shape)}); use a multiple of {self.batch_devices}")
        if global_batch % jax.process_count():
            raise MeshError(f"{key}={global_batch} does not divide over {jax.process_count()} processes")

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Each process's slice of the batch (rows in process order) -> one global array per key."""
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v)) for k, v in local.items()}

    def put(self, tree: Any, shardings: Any = None) -> Any:
        """Host arrays (the same on every process) -> global arrays with ``shardings`` (default: state rule)."""
        shardings = self.state_shardings(tree) if shardings is None else shardings
        host = jax.tree.map(np.asarray, tree)  # once per leaf, not once per device shard
        return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]), host, shardings)


def to_host(tree: Any) -> Any:
    """Global (possibly sharded, possibly multi-process) arrays -> NumPy arrays on every process.

    Every process must call it (it may all-gather); the result is the full value everywhere.
    """
    leaves = jax.tree.leaves(tree)
    if all(isinstance(x, jax.Array) and x.is_fully_addressable for x in leaves):
        return jax.tree.map(np.asarray, tree)
    mesh = next(x.sharding.mesh for x in leaves if isinstance(getattr(x, "sharding", None), NamedSharding))
    gathered = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)
    return jax.tree.map(np.asarray, gathered)


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (e.g. one host got SIGTERM: all must save together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def sync(name: str) -> None:
    """Waits until every process got here (e.g. process 0 changed a shared folder the others then read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def describe(layout: Layout) -> str:
    shape = ", ".join(f"{a}={n}" for a, n in layout.mesh.shape.items())
    return (f"mesh ({shape}) over {layout.mesh.size} {layout.mesh.devices.flat[0].platform} devices, "
            f"{jax.process_count()} process(es); state {'FSDP-sharded over fsdp' if layout.fsdp else 'replicated'}")

