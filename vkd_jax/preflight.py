"""The preflight: before any work, `main` plans every stage of the run on the devices it has
(vkd_jax.plan_pipeline) and stops, with one line, where a stage cannot fit or the mesh cannot split its batch.

    preflight(cfg)   # [] where the devices report no memory (CPU) or config.preflight is off; raises PreflightError
"""

from __future__ import annotations

import math

from vkd_jax.errors import UserError
from vkd_jax.plan import GIB, Platform
from vkd_jax.plan_pipeline import plan_pipeline


class PreflightError(UserError):
    """A stage of this run cannot fit the devices it would run on."""


def fixes_for(cfg, row: dict) -> list[str]:
    """Config fields that would lower a stage's per-device peak, strongest first."""
    out = []
    if "error" in row:
        if "batch" not in row["error"]:
            return [f"config.mesh.* for {row['chips']} devices: {row['error']}"]
        chips, batch = row["chips"], int(cfg.data.batch_size)
        g = math.gcd(chips, batch)
        axes = (f"config.mesh.data=1 config.mesh.fsdp={g}" if int(cfg.mesh.get("fsdp", 1)) != 1 else
                f"config.mesh.data={g} config.mesh.fsdp=1")
        return [f"{axes} config.mesh.tensor={chips // g} (the rest of the devices split the weights), or "
                f"config.data.batch_size a multiple of {chips}: {row['error']}"]
    if row["stage"] in ("eval", "probe"):
        return ["a device with more memory: the evaluation holds the whole model on one device",
                "config.eval.batch_size (smaller: a smaller KV cache)"]
    b = row.get("bytes_gib", {})
    if b.get("resident", 0) > 0.25 * row["peak_gib"]:
        out.append(f"{b['resident']:.1f} GiB of it are other whole models the run keeps on a device meanwhile "
                   "(vanilla, reference, unlearned): a device with more memory")
    stage = "unlearn" if row["stage"] in ("masks", "unlearn") else row["stage"].split("@")[0]
    field = f"config.method_partition.{cfg.method}" if stage == "unlearn" else f"config.stages.{stage}.partition"
    if row.get("partition") in ("full", "llm"):
        out.append(f"{field}=lora_llm or visual_lora_llm (now {row.get('partition')!r}: fp32 masters and Adam "
                   f"state for every trained weight)")
    if int(cfg.mesh.get("fsdp", 1)) == 1 and row.get("chips", 1) > 1:
        out.append("config.mesh.fsdp=-1 config.mesh.data=1 (shard params and optimizer state over the devices)")
    if str(cfg.get("remat", "none")) == "none":
        out.append("config.remat=full (recompute activations per block)")
    if b.get("act_est", 0) > 0.25 * max(row["peak_gib"], 1e-9):
        out.append(f"config.optim.grad_accum (microbatches) or config.data.batch_size (now "
                   f"{int(cfg.data.batch_size)}: activations are {b['act_est']:.1f} GiB)")
    if not str(cfg.partition.get("frozen_dtype", "")) and b.get("params_frozen", 0) > 0:
        out.append("config.partition.frozen_dtype=bfloat16 (frozen weights in 16 bits)")
    return out


def device_platform(cfg, devices) -> Platform | None:
    """This run's devices as a plan platform: their count and per-device memory (`config.preflight_device_gib`
    when set, else what the runtime reports; None where it reports nothing, as on CPU)."""
    import jax

    gib = float(cfg.get("preflight_device_gib", 0.0) or 0.0)
    if not gib:  # this process's own device (another host's cannot be asked)
        local = [d for d in devices if d.process_index == jax.process_index()] or devices
        stats = local[0].memory_stats() if hasattr(local[0], "memory_stats") else None
        limit = (stats or {}).get("bytes_limit")
        if not limit:
            return None
        gib = limit / GIB
    return Platform("this", len(devices), gib, f"{len(devices)} x {devices[0].device_kind}", 0.0, 0.0,
                    jax.process_count())


def preflight(cfg, devices=None) -> list[dict]:
    """Before any work: every stage's per-device peak on this run's devices; a stage that cannot fit raises
    PreflightError naming it, its numbers and the config fields that would make it fit. [] where the devices'
    memory is unknown (CPU) or `config.preflight` is off."""
    import jax

    if not bool(cfg.get("preflight", True)):
        return []
    devices = list(devices if devices is not None else jax.devices())
    p = device_platform(cfg, devices)
    if p is None:
        return []
    rows = plan_pipeline(cfg, [p], devices=devices, log=lambda _: None, with_time=False)["stages"]
    bad = [r for r in rows if not r["fits"]]
    if bad:
        lines = [f"stage {r['stage']!r}: " + "; ".join(fixes_for(cfg, r)) if "error" in r else
                 f"stage {r['stage']!r} needs {r['peak_gib']:.1f} GiB per device, {p.chips} device(s) have "
                 f"{p.hbm_gib:.1f} GiB (" + ", ".join(f"{k} {v:.1f}" for k, v in r["bytes_gib"].items() if v)
                 + "); to fit: " + "; ".join(fixes_for(cfg, r) or ["more devices"]) for r in bad]
        raise PreflightError("preflight: " + " | ".join(lines) + " | --config.preflight=False runs anyway "
                             "(python -m vkd_jax.plan --config C --pipeline: every stage on every platform)")
    return rows
