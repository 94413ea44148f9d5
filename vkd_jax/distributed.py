"""Multi-controller runtime: join a multi-process JAX run only when there is one.

Sources, first found wins:
  1. explicit flags --coordinator_address / --num_processes / --process_id;
  2. SLURM (`srun` with SLURM_NTASKS > 1): JAX's own cluster detection reads SLURM_* variables;
  3. a multi-host TPU VM slice (TPU_WORKER_HOSTNAMES lists more than one worker): JAX's TPU detection.
A single-process run never calls `jax.distributed.initialize`.
"""

from __future__ import annotations

import dataclasses
import os

from vkd_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    source: str  # "flags" | "slurm" | "tpu" | "single"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, environ=None) -> DistributedSpec:
    env = os.environ if environ is None else environ
    given = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ConfigError("--coordinator_address, --num_processes and --process_id go together; got "
                              f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                              f"process_id={process_id!r}")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
        if num_processes > 1:
            return DistributedSpec("flags", coordinator_address, num_processes, process_id)
        return DistributedSpec("single")
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return DistributedSpec("slurm")
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return DistributedSpec("tpu")
    return DistributedSpec("single")


def initialize(spec: DistributedSpec) -> None:
    """Call jax.distributed.initialize for multi-process specs (auto-detection for SLURM/TPU)."""
    if spec.source == "single":
        return
    import jax

    if spec.source == "flags":
        jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                                   num_processes=spec.num_processes, process_id=spec.process_id)
    else:
        jax.distributed.initialize()


def is_main_process() -> bool:
    import jax

    return jax.process_index() == 0
