"""Validate a whole pipeline config before any work: one ConfigError that lists every bad field by its `config.`
name, raised in seconds (config.json of hf_dir is the only file read), before anything is written.

    from vkd_jax.config_check import validate
    validate(cfg)   # raises ConfigError("config has N bad fields:\\n  config.method='foo': ...")

What is checked: the unlearning method and every method section's switches; partition presets (per method and per
stage) and vit_last_k; feature taps against the model's layer counts; distances; stage names, methods, streams,
steps and optimiser fields; relearning fractions in (0, 1); dtypes; the forget ratio; the data source, its paths
(hf_dir, data.manual_dir, data.generic_images) and switches; the evaluation switches; masks; remat; the mesh.
"""

from __future__ import annotations

import os

from vkd_jax.config_base import STAGE_STREAMS, TRAIN_STAGES, base
from vkd_jax.data.pipeline import CLS_ANSWERS
from vkd_jax.errors import ConfigError
from vkd_jax.eval.runner import CLS_PARSE, CLS_SCORING, TEST_POSES
from vkd_jax.models.config import canonical_dtype
from vkd_jax.models.layers import REMAT_POLICIES
from vkd_jax.unlearn.methods import METHODS, UNLEARN_METHODS, config_errors
from vkd_jax.unlearn.partition import PRESETS
from vkd_jax.unlearn.step import SCHEDULES

# the optimiser fields: a stage's own (lr, schedule) and those every stage shares, as the config base declares them
OPTIM_FIELDS = tuple(base().stages.unlearn.optim) + tuple(base().optim)
# field -> allowed values, for the fields outside the method sections (each method declares its own: METHODS)
CHOICES = {
    "vanilla_model": ("auto", "shipped", "train"),
    "data.source": ("embedded", "local"),
    "eval.clear_reading": ("followup", "official"),
    "data.cls_answer": CLS_ANSWERS,
    "eval.cls_scoring": CLS_SCORING,
    "eval.cls_parse": CLS_PARSE,
    "eval.test_pose": TEST_POSES,
    "remat": tuple(REMAT_POLICIES),
    "optim.schedule": SCHEDULES,
    "stages.unlearn.stop_rule": ("none", "floor"),  # vkd_jax.stopping
}


def _get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part, None)
    return default if node is None else node


def _model_layers(cfg, errs, files: bool = True) -> tuple[int, int] | None:
    """(vision layers, text layers) of the model the run will use, or None when they cannot be read (without
    `files`, an hf_dir that is not on this machine: `cfg.model`, as the planner plans it)."""
    from vkd_jax.models.config import config_from_model_dict, read_hf_config

    hf_dir = cfg.get("hf_dir") or ""
    try:
        if hf_dir and (files or os.path.isfile(os.path.join(hf_dir, "config.json"))):
            mc = read_hf_config(cfg.hf_dir)
        else:
            mc = config_from_model_dict(cfg.model.to_dict())
    except ValueError as e:  # a ConfigError, or a value of the wrong type (int("x")) in config.json / config.model
        errs.append(f"config.{'hf_dir' if cfg.get('hf_dir') else 'model'}: {e}")
        return None
    return mc.vision.num_hidden_layers, mc.text.num_hidden_layers


def _check_taps(taps, layers, field: str, errs) -> None:
    for tap in taps or ():
        kind, _, idx = str(tap).partition(":")
        if tap == "projector":
            continue
        if kind not in ("vision", "llm") or not idx.lstrip("-").isdigit():
            errs.append(f"config.{field}: unknown feature tap {tap!r} (use 'vision:i', 'projector' or 'llm:j')")
            continue
        if layers is None:
            continue
        n = layers[0] if kind == "vision" else layers[1]
        if not -(n + 1) <= int(idx) <= n:
            errs.append(f"config.{field}: tap {tap!r} is out of range: the model's {kind} tower has {n} layers "
                        f"(hidden states {-(n + 1)}..{n})")


def _check_optim(o, field: str, errs) -> None:
    if o is None:
        return
    for k in o.keys():
        if k not in OPTIM_FIELDS:
            errs.append(f"config.{field}.{k}: unknown optimiser field (known: {', '.join(OPTIM_FIELDS)})")
    if "schedule" in o and o["schedule"] not in CHOICES["optim.schedule"]:
        errs.append(f"config.{field}.schedule={o['schedule']!r}: use one of {CHOICES['optim.schedule']}")
    if "lr" in o and not float(o["lr"]) > 0:
        errs.append(f"config.{field}.lr={o['lr']!r}: must be > 0")
    if "grad_accum" in o and int(o["grad_accum"]) < 1:
        errs.append(f"config.{field}.grad_accum={o['grad_accum']!r}: must be >= 1")


def validate(cfg, files: bool = True) -> None:
    """Every bad field at once, as one ConfigError. files=False leaves out the files and folders the config names
    (hf_dir, data.manual_dir, data.generic_images): for the planner, which reads none of them."""
    errs: list[str] = []

    def choice(field):
        v = _get(cfg, field)
        if v is not None and v not in CHOICES[field]:
            errs.append(f"config.{field}={v!r}: use one of {CHOICES[field]}")

    method = cfg.get("method")
    if method not in UNLEARN_METHODS:
        errs.append(f"config.method={method!r}: unknown unlearning method (known: {', '.join(UNLEARN_METHODS)})")
    from vkd_jax.benchmarks import BENCHMARKS, benchmark_class

    bench = _get(cfg, "data.benchmark", "mllmu")
    bench_cls = benchmark_class(bench) if bench in BENCHMARKS else None  # the registry: one line per benchmark
    if bench_cls is None:
        errs.append(f"config.data.benchmark={bench!r}: use one of {tuple(BENCHMARKS)}")
    ratios = bench_cls.ratios if bench_cls else ()
    if ratios and cfg.get("forget_ratio") not in ratios:
        errs.append(f"config.forget_ratio={cfg.get('forget_ratio')!r}: {bench} has forget ratios {ratios}")
    for field, low in (("seed", 0), ("unlearn_seed", -1), ("splits", 0)):
        v = cfg.get(field, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            errs.append(f"config.{field}={v!r}: an integer >= {low}")
    gib = cfg.get("preflight_device_gib", 0.0)
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or gib < 0:
        errs.append(f"config.preflight_device_gib={gib!r}: GiB per device, >= 0 (0: what the devices report)")
    for field in CHOICES:
        if not field.startswith("optim."):
            choice(field)
    tasks = bench_cls.train_tasks if bench_cls else ()
    bad_tasks = [t for t in _get(cfg, "data.train_tasks", ()) or () if tasks and t not in tasks]
    if bad_tasks:
        errs.append(f"config.data.train_tasks: {bad_tasks} are not {bench} tasks ({', '.join(tasks)})")
    for field in ("dtype", "param_dtype", "export_dtype", "partition.frozen_dtype", "partition.master_dtype"):
        v = _get(cfg, field, "")
        if v or field == "dtype":
            try:
                canonical_dtype(v)
            except ConfigError:
                errs.append(f"config.{field}={v!r}: use float32, bfloat16 or float16" +
                            ("" if field == "dtype" else ", or '' (as stored)"))
    layers = _model_layers(cfg, errs, files)
    # partitions
    method_partition = cfg.get("method_partition") or {}
    if method in UNLEARN_METHODS and method not in method_partition:
        errs.append(f"config.method_partition.{method}: missing (the preset the unlearn stage trains)")
    for m, preset in method_partition.items():
        if m not in UNLEARN_METHODS:
            errs.append(f"config.method_partition.{m}: unknown method (known: {', '.join(UNLEARN_METHODS)})")
        elif preset not in PRESETS:
            errs.append(f"config.method_partition.{m}={preset!r}: unknown preset (known: {', '.join(PRESETS)})")
    k = int(_get(cfg, "partition.vit_last_k", 0))
    used = list(method_partition.values()) + [
        s.get("partition") for s in (cfg.get("stages") or {}).values() if hasattr(s, "get")]
    if layers is not None and "visual_last_k" in used and not 0 <= k <= layers[0]:
        errs.append(f"config.partition.vit_last_k={k}: the vision tower has {layers[0]} layers")
    # stages
    stages = cfg.get("stages") or {}
    for name in stages.keys():
        if name not in TRAIN_STAGES:
            errs.append(f"config.stages.{name}: unknown stage (stages: {', '.join(TRAIN_STAGES)}; masks follow "
                        "config.mask)")
            continue
        s = stages[name]
        if int(s.get("num_steps", 0)) < 0:
            errs.append(f"config.stages.{name}.num_steps={s.get('num_steps')!r}: must be >= 0")
        if name != "unlearn":
            if s.get("method", "ft") not in METHODS:
                errs.append(f"config.stages.{name}.method={s.get('method')!r}: unknown method")
            if s.get("partition", "full") not in PRESETS:
                errs.append(f"config.stages.{name}.partition={s.get('partition')!r}: unknown preset "
                            f"(known: {', '.join(PRESETS)})")
            bad = [x for x in s.get("streams", ()) if x not in STAGE_STREAMS[name]]
            if bad:
                errs.append(f"config.stages.{name}.streams: unknown streams {bad} (this stage has "
                            f"{', '.join(STAGE_STREAMS[name])})")
        _check_optim(s.get("optim"), f"stages.{name}.optim", errs)
    for f in _get(cfg, "stages.relearn.fractions", ()) or ():
        if not 0 < float(f) < 1:
            errs.append(f"config.stages.relearn.fractions: {f!r} is not in (0, 1)")
    if not float(_get(cfg, "stages.relearn.cross_fit_from", 1.0)) > 0:
        errs.append("config.stages.relearn.cross_fit_from: must be > 0 (> 1: one attack per fraction)")
    rule = _get(cfg, "stages.unlearn.stop_rule", "none")
    choice("stages.unlearn.stop_rule")
    if rule in CHOICES["stages.unlearn.stop_rule"] and bench_cls is not None and rule not in bench_cls.stop_rules:
        errs.append(f"config.stages.unlearn.stop_rule={rule!r}: {bench} has stopping rules {bench_cls.stop_rules}")
    if int(_get(cfg, "stages.unlearn.stop_every", 1)) < 1:
        errs.append(f"config.stages.unlearn.stop_every={_get(cfg, 'stages.unlearn.stop_every')!r}: must be >= 1")
    _check_optim(cfg.get("optim"), "optim", errs)
    batch = int(_get(cfg, "data.batch_size", 1))
    accums = {"optim": int(_get(cfg, "optim.grad_accum", 1))}  # each stage's: the base's unless it overrides it
    for name, s in (cfg.get("stages") or {}).items():
        if "grad_accum" in ((s or {}).get("optim") or {}):
            accums[f"stages.{name}.optim"] = int(s.optim.grad_accum)
    for field, accum in accums.items():
        if accum >= 1 and batch >= 1 and batch % accum:
            errs.append(f"config.{field}.grad_accum={accum}: config.data.batch_size={batch} does not split into "
                        f"{accum} microbatches")
    # methods: each section against its method's declaration (fields, choices, limits); the taps against the model
    for m in UNLEARN_METHODS:
        errs += config_errors(m, cfg.get(m))
    _check_taps(_get(cfg, "vkd.taps", ()), layers, "vkd.taps", errs)
    # masks
    if not float(_get(cfg, "mask.tau", 1.0)) > 0:
        errs.append(f"config.mask.tau={_get(cfg, 'mask.tau')!r}: must be > 0")
    if not 0 <= float(_get(cfg, "mask.top_p", 0.0)) < 1:
        errs.append(f"config.mask.top_p={_get(cfg, 'mask.top_p')!r}: must be in [0, 1) (0: the tau rule)")
    mod = _get(cfg, "mask.modules", "unlearn")
    if mod != "unlearn" and mod not in PRESETS:
        errs.append(f"config.mask.modules={mod!r}: 'unlearn' (the unlearning partition) or a preset")
    # data, paths
    for field in ("data.batch_size", "eval.batch_size", "eval.max_new_tokens", "eval.few_shot_cls",
                  "eval.few_shot_cloze", "eval.clear_official_rows", "eval.clear_official_max_new_tokens"):
        if int(_get(cfg, field, 1)) < 1:
            errs.append(f"config.{field}={_get(cfg, field)!r}: must be >= 1")
    hf_dir = cfg.get("hf_dir") or ""
    if files:
        _check_files(cfg, bench, method, hf_dir, errs)
    for axis in ("data", "fsdp", "tensor"):
        v = int(_get(cfg, f"mesh.{axis}", 1))
        if v == 0 or v < -1:
            errs.append(f"config.mesh.{axis}={v}: a size >= 1, or -1 (the remaining devices)")
    if errs:
        raise ConfigError(f"config has {len(errs)} bad field{'s' if len(errs) > 1 else ''}:\n  " + "\n  ".join(errs))


def _check_files(cfg, bench: str, method, hf_dir: str, errs: list[str]) -> None:
    """The files and folders the config names exist (nothing is downloaded at run time)."""
    if hf_dir and not os.path.isfile(os.path.join(hf_dir, "config.json")):
        errs.append(f"config.hf_dir={hf_dir!r}: no config.json there (a local HF LLaVA folder, or the repo id of "
                    "one in the local Hugging Face cache, is needed; nothing is downloaded)")
    if _get(cfg, "data.source") == "local":
        manual = _get(cfg, "data.manual_dir", "")
        if not manual or not os.path.isdir(manual):
            errs.append(f"config.data.manual_dir={manual!r}: the downloaded {bench} folder (or its repo id in the "
                        "local Hugging Face cache) is needed (nothing is downloaded at run time)")
        if not hf_dir:
            errs.append("config.hf_dir='': the HF LLaVA folder (weights and tokenizer) is needed for "
                        "data.source='local'")
        if float(_get(cfg, "vkd.b_g", 0)) > 0 and method == "vkd" and not _get(cfg, "data.generic_images", ""):
            errs.append("config.data.generic_images='': vkd.b_g > 0 needs a local folder of images outside every "
                        f"{bench} split")
    gen = _get(cfg, "data.generic_images", "")
    if gen and not os.path.isdir(gen):
        errs.append(f"config.data.generic_images={gen!r}: not a folder")
