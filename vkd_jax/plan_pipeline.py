"""The whole pipeline's plan: every stage `vkd_jax.main` would run for a config, per platform: per-device peak
memory, FLOPs, bytes moved, estimated time (main's preflight: vkd_jax.preflight). Results and assumptions:
docs/pipeline_plan.md.

    python -m vkd_jax.plan --config configs/llava7b.py --pipeline --out plan7b.json [--platforms v4-8,gpu1x80]

Stages, read from the config by the pipeline's own helpers: pretrain (embedded worlds), vanilla, reference, then per
forget split masks, unlearn, eval (vanilla and unlearned), relearn@<p> (its attacks and held-out evaluations), probe,
export. A training stage is its real train step (`unlearn.step.build_step`), planned as `vkd_jax.plan` plans one:
exact per-device state, analytic activations, matmul FLOPs (vkd_jax.flops), memory traffic (`step_bytes_moved`),
plus the other whole models the run keeps alive meanwhile (`Stage.resident`). Evaluation and the probe: one device
holding the model, the KV cache, the attention scores. Time: FLOPs at `MFU` of the peak; decoding reads the weights
and the KV cache per new token at `BW_EFF` of the bandwidth; downloaded benchmarks' sizes: `EVAL_PROMPTS`.
"""

from __future__ import annotations

import dataclasses
import math

from vkd_jax.errors import ConfigError
from vkd_jax.plan import GIB, Platform, check_devices
from vkd_jax.plan_costs import (
    BW_EFF,
    MFU,
    base_vision,
    by_layer_slopes,
    eval_bytes,
    eval_len,
    eval_seconds,
    model_sizes,
    resident,
    step_bytes_moved,
    step_flops,
)
from vkd_jax.run_models import build_model_config

DISK_GBPS = 1.0  # export: host disk write bandwidth assumed
# Prompts one full evaluation decodes, per benchmark (downloads): MLLMU-Bench forget 5% (25 people), Test (the same
# people, 4 poses averaged), Retain (475), Real celebrity (153), about 14 questions per profile, each asked with the
# image and as text; CLEAR forget 10% (20 people), retain (180), real faces and real world, name MC and text QA.
EVAL_PROMPTS = {"mllmu": (25 + 25 * 4 + 475 + 153) * 14 * 2, "clear": (20 + 180) * 10 + 300 + 300}
PROBE_IMAGES = {"mllmu": 653 * 4, "clear": 200 * 8}
PIPELINE_PLATFORMS = ("v4-8", "v5e-16", "v5p-8", "gpu1x80", "gpu1x141", "gpu8x80")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str          # row name: vanilla, masks, unlearn, eval, relearn@0.5, ...
    kind: str          # train | masks | eval | probe | export
    stage: str = ""    # the config's stage section (train and masks)
    steps: int = 0     # steps (train), batches (masks)
    repeats: int = 1   # how many times a run does it (forget splits x attacks)
    eval_prompts: int = 0  # prompts it evaluates besides (relearning's held-out questions)
    resident: int = 0  # other whole models the run holds on a device meanwhile (experiment.run's live params)
    masked: bool = False  # unlearning with saliency masks (their state in the optimizer's)


def num_splits(cfg) -> int:
    """Forget splits a run unlearns, as the benchmarks count them (splits=0: every person of an embedded world
    once; a download has its own one)."""
    from vkd_jax.benchmarks.worlds import split_size

    if int(cfg.splits) or cfg.data.source != "embedded":
        return int(cfg.splits) or 1
    from vkd_jax.benchmarks import benchmark_class

    n, _ = benchmark_class(cfg.data.benchmark).world_sizes(cfg)
    return n // split_size(n, int(cfg.forget_ratio))


def eval_prompts(cfg) -> int:
    if cfg.data.source == "embedded":  # the worlds' own sizes: every person and celebrity, about 8 prompts each
        from vkd_jax.benchmarks import benchmark_class

        return sum(benchmark_class(cfg.data.benchmark).world_sizes(cfg)) * 8
    n = EVAL_PROMPTS[cfg.data.benchmark]
    # eval.max_questions caps each (set, kind): 4 sets x classification / generation / cloze, image and text
    return min(n, int(cfg.eval.max_questions) * 4 * 6) if int(cfg.eval.max_questions) else n


def pipeline_stages(cfg) -> list[Stage]:
    """What main runs for `cfg`, in order (module doc)."""
    from vkd_jax import run_models
    from vkd_jax.attacks import relearn_windows
    from vkd_jax.unlearn.methods import make_method

    method = make_method(cfg.method, cfg[cfg.method])
    out = []
    # resident: the params a stage starts from stay alive while it trains (1); vanilla, and the reference, through
    # every split; the unlearned model through its evaluations, relearning and probe
    for name in (["pretrain"] if cfg.data.source == "embedded" else []) + ["vanilla"]:
        if int(cfg.stages[name].num_steps) > 0:
            out.append(Stage(name, "train", name, int(cfg.stages[name].num_steps), resident=1))
    ref = int(run_models.uses_reference(cfg, method))
    if ref:
        out.append(Stage("reference", "train", "reference", int(cfg.stages.reference.num_steps), resident=2))
    k = num_splits(cfg)
    masked = run_models.uses_masks(cfg, method)
    if masked:  # on the vanilla params themselves (counted in its row)
        out.append(Stage("masks", "masks", "unlearn", 2 * int(cfg.mask.num_batches), k, resident=ref))
    out.append(Stage("unlearn", "train", "unlearn", int(cfg.stages.unlearn.num_steps), k, resident=1 + ref,
                     masked=masked))
    # the vanilla and the unlearned model on each split's sets: the other one and the reference alive
    out.append(Stage("eval", "eval", repeats=2 * k, resident=1 + ref))
    forget_vqa = max(1, eval_prompts(cfg) // 20)  # the forget people's VQA questions: the attack's pool
    for f in cfg.stages.relearn.fractions:
        attacks = len(relearn_windows(1000, float(f), float(cfg.stages.relearn.cross_fit_from)))
        held_out = round((1 - float(f)) * forget_vqa)
        out.append(Stage(f"relearn@{float(f):g}", "train", "relearn", int(cfg.stages.relearn.num_steps),
                         k * attacks, eval_prompts=2 * held_out, resident=2 + ref))
    if cfg.eval.probe:
        out.append(Stage("probe", "probe", repeats=2 * k, resident=1 + ref))
    if cfg.export_hf:
        out.append(Stage("export", "export"))
    return out


def mesh_of(cfg, platform: Platform, devices):
    """The config's own mesh (`mesh.*`, -1: the rest of the devices) on `platform`'s chips."""
    from vkd_jax.unlearn import partition as pt
    return pt.make_mesh(cfg.mesh, devices[:platform.chips])


def stage_step(cfg, mc, stage: str, mesh, text_len: int):
    """The stage's train step as `stages._train_stage` builds it, on `mesh` (a vkd_jax.plan.PlannedStep)."""
    import jax

    from vkd_jax.plan import PlannedStep, dummy_batch
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.step import build_step
    from vkd_jax.unlearn.train import prepare_batch

    method, pcfg, ocfg, axis_rules = stages.stage_training(cfg, stage, mc)
    built = build_step(mc, method, partition_cfg=pcfg, optim_cfg=ocfg,
                       num_steps=max(int(cfg.stages[stage].num_steps), 1), mesh=mesh, axis_rules=axis_rules)
    method_name, preset = method.name, pcfg.preset
    batch = int(cfg.data.batch_size)
    host = {s: prepare_batch(dummy_batch(mc, batch, text_len, image=s != "qa"), method, s) for s in method.streams}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
    return PlannedStep(built, abstract, host, mc, method_name, preset, mc.text.remat, text_len)


def plan_stage(cfg, mc, s: Stage, p: Platform, devices, sizes: dict, seq: int, text_len: int, memo: dict,
               with_time: bool = True) -> dict:
    """One stage on one platform: the row of the plan (module doc)."""
    from vkd_jax.plan import block_bytes, plan_row, saved_key
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.stages import optim_cfg

    row = {"platform": p.name, "stage": s.name, "hbm_gib": round(p.hbm_gib, 2), "chips": p.chips,
           "repeats": s.repeats}
    flops = moved = seconds = 0.0

    def cannot_run(error: str, **more) -> dict:  # a stage the run itself would stop at
        row.update(peak_gib=None, fits=False, bytes_gib={}, error=error, **more)
        return {**row, **(dict(flops=0.0, bytes_moved=0.0, seconds=0.0) if with_time else {})}

    if s.kind in ("train", "masks"):
        try:
            mesh = mesh_of(cfg, p, devices)
        except ConfigError as e:  # a mesh of fixed sizes for another chip count
            return cannot_run(str(e))
        shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
        if int(cfg.data.batch_size) % shards:
            return cannot_run(f"global batch {int(cfg.data.batch_size)} does not divide over the {shards} batch "
                              f"shards (data x fsdp) of mesh {dict(mesh.shape)}", mesh=dict(mesh.shape))
        ps = stage_step(cfg, mc, s.stage, mesh, text_len)
        rows_memo = memo.setdefault("rows", {})
        key = saved_key(ps, int(cfg.data.batch_size))
        if key not in rows_memo:  # what the loss saves, by layer slopes (plan_row reads it from the memo)
            one = pt.make_mesh(None, devices[:1])  # global counts: any mesh

            def saved_of(m):
                q = stage_step(cfg, m, s.stage, one, text_len)
                return plan_row(q, p, int(cfg.data.batch_size), s.name, memo={})["bytes"]["saved_activations"]
            rows_memo[key] = by_layer_slopes(mc, saved_of, base_vision(cfg, ps.preset))
        accum = int(optim_cfg(cfg, cfg.stages[s.stage])["grad_accum"]) if s.kind == "train" else 1
        b = dict(plan_row(ps, p, int(cfg.data.batch_size), s.name, memo=rows_memo, accum=accum)["bytes"])
        streams = max(len(ps.batch), 1)
        n_train = sum(math.prod(x.shape) for x in ps.built.abstract_state.trainable.values())
        if s.kind == "masks":  # stages.compute_masks: on one device, the whole model and a whole batch of one
            # stream; float32 gradients, two Fisher sums and their update; no optimizer state
            rows = int(cfg.data.batch_size)
            b = {"params": sizes["bytes"], "fisher": 4 * 4 * n_train, "batch": b["batch"] * shards // streams,
                 "act_est": rows_memo[key] // streams + 2 * block_bytes(mc, rows, text_len)}
        elif s.masked:  # the saliency masks in the optimizer state
            b["masks"] = n_train
        b["resident"] = resident(s.resident, p, sizes)
        b["peak_est"] = sum(v for k, v in b.items() if k in ("params", "params_trainable", "params_frozen",
                                                              "teacher", "opt_state", "batch", "act_est", "fisher",
                                                              "masks", "resident"))
        if with_time:
            costs = memo.setdefault("flops", {})
            key = (ps.method_name, ps.preset, tuple(sorted(ps.batch)))
            if key not in costs:
                costs[key] = by_layer_slopes(mc, lambda m: step_flops(stage_step(cfg, m, s.stage, mesh, text_len)),
                                             base_vision(cfg, ps.preset))
            per = s.steps / streams if s.kind == "masks" else s.steps  # masks: one stream per batch
            flops, moved = costs[key] * per, step_bytes_moved(b, ps.remat) * per
            seconds = flops / (p.chips * p.peak_tflops * 1e12 * MFU)
            if s.eval_prompts:
                kv = eval_bytes(mc, sizes, cfg, seq)["kv_cache"]
                seconds += eval_seconds(sizes, kv, s.eval_prompts, cfg, seq, p)
        row.update(mesh=dict(ps.built.mesh.shape), method=ps.method_name, partition=ps.preset, remat=ps.remat)
        peak = b["peak_est"]
    elif s.kind == "eval":
        n = eval_prompts(cfg)
        b = {**eval_bytes(mc, sizes, cfg, seq), "resident": resident(s.resident, p, sizes)}
        peak = sum(b.values())
        new = int(cfg.eval.max_new_tokens)
        flops = 2.0 * sizes["count"] * n * (eval_len(seq) + new)
        moved = float(-(-n // int(cfg.eval.batch_size)) * new * (sizes["bytes"] + b["kv_cache"]))
        seconds = eval_seconds(sizes, b["kv_cache"], n, cfg, seq, p) if with_time else 0.0
        row["prompts"] = n
    elif s.kind == "probe":  # the visual side's features of the probe's images, on one device
        v = mc.vision
        images = PROBE_IMAGES[cfg.data.benchmark] if cfg.data.source == "local" else 1000
        b = {"params": sizes["bytes"], "resident": resident(s.resident, p, sizes),
             "activations": 64 * (v.num_patches + 1) * v.intermediate_size * 4,
             "attention": 2 * 64 * v.num_attention_heads * (v.num_patches + 1) ** 2 * 4}
        peak = sum(b.values())
        flops = 2.0 * sizes["visual"] * images * (v.num_patches + 1)
        moved = float(sizes["bytes"])
        seconds = flops / (p.peak_tflops * 1e12 * MFU) if with_time else 0.0
    else:  # export: the host writes the merged params; nothing on the devices
        b, peak = {}, 0
        moved = float(sizes["bytes"])
        seconds = moved / (DISK_GBPS * 1e9)
    row.update(peak_gib=round(peak / GIB, 3), fits=bool(peak <= p.hbm_gib * GIB),
               bytes_gib={k: round(v / GIB, 6) for k, v in b.items()})
    if with_time:
        row.update(flops=flops * s.repeats, bytes_moved=moved * s.repeats, seconds=seconds * s.repeats)
    return row


def plan_pipeline(cfg, platforms, *, text_len: int = 128, devices=None, log=print, with_time: bool = True) -> dict:
    """{"model", "assumptions", "stages": [row, ...], "totals": {platform: {...}}} (module doc)."""
    import jax

    mc = build_model_config(cfg)
    devices = list(devices if devices is not None else jax.devices())
    sizes = model_sizes(mc)
    seq = 1 + mc.image_seq_length + text_len
    stages_ = pipeline_stages(cfg)
    memo: dict = {}
    check_devices(platforms, devices)
    rows = []
    for p in platforms:
        for s in stages_:
            rows.append(plan_stage(cfg, mc, s, p, devices, sizes, seq, text_len, memo, with_time))
            log(format_stage_row(rows[-1]))
    totals = {}
    for p in platforms:
        rs = [r for r in rows if r["platform"] == p.name]
        totals[p.name] = {"fits": all(r["fits"] for r in rs),
                          "peak_gib": max((r["peak_gib"] for r in rs if r["peak_gib"] is not None), default=None),
                          "hbm_gib": p.hbm_gib, "too_big": [r["stage"] for r in rs if not r["fits"]]}
        if with_time:
            totals[p.name]["seconds"] = sum(r["seconds"] for r in rs)
    return {"model": {"params": sizes["count"], "text_layers": mc.text.num_hidden_layers,
                      "vision_layers": mc.vision.num_hidden_layers, "hidden": mc.text.hidden_size,
                      "storage_dtype": mc.param_dtype, "compute_dtype": mc.dtype, "remat": mc.text.remat},
            "assumptions": {"mfu": MFU, "decode_bandwidth_efficiency": BW_EFF, "disk_gbps": DISK_GBPS,
                            "text_len": text_len, "seq_len": seq, "splits": num_splits(cfg),
                            "eval_prompts": eval_prompts(cfg), "eval_on_one_device": True,
                            "platforms": {p.name: dataclasses.asdict(p) for p in platforms}},
            "stages": rows, "totals": totals}


def format_stage_row(r: dict) -> str:
    t = f" {r['seconds'] / 3600:8.2f} h" if "seconds" in r else ""
    if "error" in r:
        return f"{r['platform']:9s} {r['stage']:13s} CANNOT RUN: {r['error']}"
    return (f"{r['platform']:9s} {r['stage']:13s} peak {r['peak_gib']:8.2f} / {r['hbm_gib']:6.1f} GiB "
            f"{'fits' if r['fits'] else 'DOES NOT FIT'}{t}" + (f" x{r['repeats']}" if r["repeats"] > 1 else ""))


def markdown(plan: dict) -> str:
    """The plan as a table: a row per stage, a column per platform, each cell peak GiB per device and hours
    (x the repeats); the last row the totals."""
    platforms = list(plan["totals"])
    stages = list(dict.fromkeys(r["stage"] for r in plan["stages"]))
    cell = {(r["platform"], r["stage"]): r for r in plan["stages"]}

    def fmt(r):
        if r is None:
            return ""
        if "error" in r:
            return "cannot run (batch)"
        h = f", {r['seconds'] / 3600:.2f} h" if "seconds" in r else ""
        return f"{r['peak_gib']:.1f}{'' if r['fits'] else ' **no**'}{h}"

    head = "| stage | " + " | ".join(f"{p} ({plan['totals'][p]['hbm_gib']:g} GiB)" for p in platforms) + " |"
    lines = [head, "|---" * (len(platforms) + 1) + "|"]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(fmt(cell.get((p, s))) for p in platforms) + " |")
    tot = plan["totals"]
    lines.append("| **total** | " + " | ".join(
        ("fits" if tot[p]["fits"] else "does not fit") + (f", {tot[p]['seconds'] / 3600:.1f} h" if "seconds" in
                                                          tot[p] else "") for p in platforms) + " |")
    return "\n".join(lines)
