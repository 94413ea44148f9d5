"""The whole pipeline behind `python -m vkd_jax.main`: data -> vanilla model -> unlearning -> evaluation -> report.

Work directory layout (every stage is cached; a rerun reuses what finished, a killed stage resumes):
  <shared>/benchmark/{raw,tfds,tokenizer}   embedded benchmark (parquet), its TFDS ArrayRecords, the tokenizer
  <shared>/init, pretrain/, vanilla/, reference/   the model before unlearning (shared by every method and seed)
  <run>/masks/, unlearn/, relearn/p<frac>/          this method's stages
  <run>/eval/<model>.json                           evaluation results per model
  <run>/results.json, report.md, plots/*.png, hf_export/
`shared` is the work directory itself for `main`; `reproduce` shares one across methods and seeds.

Both may be gs:// URIs: every read and write under them goes through `vkd_jax.io_utils` (etils.epath; orbax for
checkpoints). The benchmark folder is the exception: pyarrow, TFDS/ArrayRecord and tokenizers need local files, so
for a remote `shared` it lives in a local cache, `local_cache_dir(shared)/benchmark` (each host builds it there;
the embedded world is generated from config.data.world_seed, MLLMU-Bench prepared from config.data.manual_dir).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zlib

import jax
import numpy as np
from absl import logging

from vkd_jax.io_utils import (
    atomic_write_text,
    is_complete_dir,
    local_staging_dir,
    makedirs,
    read_json_if_exists,
)

# ---- data ------------------------------------------------------------------------------------------------

def prepare_data(cfg, shared: str, local_cache: str | None = None):
    """The configured benchmark (vkd_jax.data.benchmarks), its data generated or checked and its tokenizer."""
    from vkd_jax.data.benchmarks import make_benchmark

    return make_benchmark(cfg, shared, local_cache)


def stream_seed(cfg, stage: str, stream: str) -> int:
    """The input-pipeline seed of one (stage, stream) of a run, derived from the names and the stage's seed
    (config_base.stage_seed): a new stream or stage changes no other stream's order."""
    from vkd_jax.config_base import stage_seed

    return zlib.crc32(f"{stage}/{stream}/{stage_seed(cfg, stage)}".encode())


def build_pipeline(bench, cfg, spec, seed: int, model_config):
    """A StreamSpec -> an infinite, resumable, shuffled training pipeline of the run's batch and length rules."""
    from vkd_jax.data.pipeline import InputPipeline, PipelineConfig

    mc = model_config
    pcfg = PipelineConfig(tasks=tuple(spec.tasks), types=tuple(spec.types), train=True,
                          global_batch_size=int(cfg.data.batch_size), max_len=int(cfg.data.max_len) or None,
                          length_buckets=tuple(cfg.data.length_buckets), padding_side="right", shuffle=True,
                          seed=seed, num_epochs=None, image_seq_length=mc.image_seq_length,
                          image=image_processor(cfg, mc), num_threads=int(cfg.data.num_threads),
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          keys=spec.keys, resample_options=spec.resample_options,
                          cls_answer=str(cfg.data.get("cls_answer", "letter")))
    return InputPipeline(spec.source, bench.tokenizer, pcfg, examples=spec.examples)


def hf_image_processor(cfg):
    """hf_dir's preprocessor_config.json (what its processor does to an image), or None without one."""
    from vkd_jax.preprocess import ImageProcessorConfig

    hf_dir = cfg.get("hf_dir") or ""
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "preprocessor_config.json")):
        return ImageProcessorConfig.from_hf_dir(hf_dir)
    return None


def image_processor(cfg, model_config):
    """The model's image preprocessing: hf_dir's, else CLIP's at the model's image size."""
    from vkd_jax.data.pipeline import image_config

    return hf_image_processor(cfg) or image_config(model_config.vision.image_size)


def _method_streams(cfg) -> tuple[str, ...]:
    """The streams the configured unlearning method reads (as run_stage will build it)."""
    import ml_collections

    from vkd_jax.unlearn.methods import make_method

    return make_method(cfg.method, ml_collections.ConfigDict(dict(cfg.get(cfg.method, {}) or {}))).streams


def stage_streams(name: str, bench, cfg, model_config) -> dict:
    """The training pipelines a stage reads: its config's streams (pretrain, vanilla, reference), forget and retain
    (masks), or its method's (unlearn); VQA and QA never share a batch."""
    specs = bench.stage_streams(name)
    if name in ("pretrain", "vanilla", "reference"):
        wanted = tuple(cfg.stages[name].get("streams", ("vqa", "qa")))
    elif name == "masks":
        wanted = ("forget", "retain")
    else:
        wanted = _method_streams(cfg)
    unknown = [s for s in wanted if s not in specs]
    if unknown:
        raise ValueError(f"stage {name!r} reads streams {unknown}, which benchmark {bench.name!r} does not have "
                         f"(it has {sorted(specs)})")
    out = {}
    for s in wanted:
        spec = specs[s]() if callable(specs[s]) else specs[s]
        out[s] = build_pipeline(bench, cfg, spec, stream_seed(cfg, name, s), model_config)
    return out


# ---- models and stages -------------------------------------------------------------------------------------

def build_model_config(cfg, data):
    from vkd_jax.models.config import config_from_model_dict
    from vkd_jax.models.hf_io import read_model_config

    if cfg.hf_dir:
        mc = read_model_config(cfg.hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None)
    else:
        model = cfg.model.to_dict()
        tok = data.tokenizer
        model["text_config"].update(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
                                    bos_token_id=tok.bos_id)
        model["image_token_index"] = tok.image_token_id
        mc = config_from_model_dict(model, dtype=cfg.dtype, param_dtype=cfg.param_dtype or "float32")
    remat = str(cfg.get("remat", "none"))
    return mc.with_remat(remat) if remat != "none" else mc


def host_params(params: dict) -> dict:
    """A model the run keeps between stages, in host memory: a stage or an evaluation puts it on its devices and
    lets go of them after, so no device holds a model it is not using (vkd_jax.plan_pipeline plans on that). A
    multi-process run keeps its (globally sharded) arrays where they are."""
    return params if jax.process_count() > 1 else jax.device_get(params)


def on_device(params: dict) -> dict:
    """A model's params on the default device for an evaluation (arrays already placed stay where they are)."""
    return jax.device_put(params)


def initial_params(cfg, data, shared: str, model_config) -> dict:
    from flax import nnx

    from vkd_jax.models.hf_io import flat_params, load_hf
    from vkd_jax.models.llava import Llava
    from vkd_jax.models.orbax_io import load_model_orbax, save_model_orbax

    ckpt = os.path.join(shared, "init")
    if is_complete_dir(ckpt):
        return host_params(flat_params(load_model_orbax(ckpt)))
    model = load_hf(cfg.hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None) if cfg.hf_dir else \
        Llava(model_config, rngs=nnx.Rngs(int(cfg.seed)))
    save_model_orbax(model, ckpt)
    return host_params(flat_params(model))


def _stage(name, cfg, workdir, params, streams, model_config, tokenizer, **kw):
    from vkd_jax.unlearn.stages import run_stage

    return run_stage(name, cfg, workdir, params, streams, model_config=model_config, tokenizer=tokenizer, **kw)


def count_params(part_preset: str, cfg, model_config) -> tuple[int, int]:
    from vkd_jax.models.hf_io import abstract_model
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.stages import partition_cfg

    _, abstract = abstract_model(model_config)
    part = pt.make_partition(abstract, partition_cfg(cfg, part_preset, model_config))
    train = set(part.trainable_keys) | set(part.lora_keys)
    total = sum(int(np.prod(s.shape)) for s in abstract.values())
    n_train = sum(int(np.prod(abstract[k].shape)) for k in abstract if k in train)
    return n_train, total


# ---- evaluation ----------------------------------------------------------------------------------------------

def eval_config(cfg):
    from vkd_jax.eval import EvalConfig

    e = cfg.eval
    return EvalConfig(max_new_tokens=int(e.max_new_tokens), batch_size=int(e.batch_size), seed=int(cfg.seed),
                      image=hf_image_processor(cfg),
                      few_shot=bool(e.few_shot), few_shot_cls=int(e.get("few_shot_cls", 1)),
                      few_shot_cloze=int(e.get("few_shot_cloze", 2)),
                      max_questions=int(e.max_questions) or None, cls_scoring=str(e.get("cls_scoring", "generate")),
                      cls_parse=str(e.get("cls_parse", "official")), test_pose=str(e.get("test_pose", "mean")))


def write_predictions(path: str, records: list[dict]) -> None:
    """One JSON record per evaluated question (and pose), as `vkd_jax.eval.evaluator.RECORD_FIELDS`."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _none_for_nan(x):
    if isinstance(x, dict):
        return {k: _none_for_nan(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate_cached(name: str, params: dict, cfg, data, model_config, out_dir: str) -> dict:
    """The benchmark's evaluation of one model, cached in <out_dir>/eval/<name>.json beside its per-question
    predictions (<name>.predictions.jsonl)."""
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(out_dir, "eval", f"{name}.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached
    graphdef, _ = abstract_model(model_config)
    model = model_from_flat_params(graphdef, on_device(params))
    t = time.time()
    records: dict[str, list] = {}
    res = _none_for_nan(data.evaluate(model, eval_config(cfg), records))
    logging.info("evaluated %s in %.1f s", name, time.time() - t)
    # the predictions first: the metrics file marks the evaluation finished
    write_predictions(os.path.join(out_dir, "eval", f"{name}.predictions.jsonl"),
                      [r for s in records for r in records[s]])
    atomic_write_text(path, json.dumps(res, indent=2, sort_keys=True))
    return res


def identity_free_floor(params: dict, cfg, data, model_config, shared: str) -> float:
    """Forget VQA accuracy of a model shown the mean image instead of the person: what the frozen LLM answers
    without identity (the floor a well-forgotten model should sit at, rather than far below chance)."""

    return identity_free_floor_values(params, cfg, data, model_config, shared)[0]


def identity_free_floor_values(params: dict, cfg, data, model_config, shared: str) -> tuple[float, list]:
    """(the floor, its per-question [person, value] pairs), cached in <shared>/eval/identity_free_floor.json."""
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(shared, "eval", "identity_free_floor.json")
    cached = read_json_if_exists(path)
    if cached is None:
        model = model_from_flat_params(abstract_model(model_config)[0], on_device(params))
        records: list[dict] = []
        acc = data.identity_free_floor(model, eval_config(cfg), records)
        write_predictions(os.path.join(shared, "eval", "identity_free_floor.predictions.jsonl"), records)
        cached = {"forget_vqa_cls_acc": acc, "image": "the mean of the training images",
                  "values": data.question_values(records)[data.relearn_metric]}
        atomic_write_text(path, json.dumps(cached))
    return cached["forget_vqa_cls_acc"], [tuple(v) for v in cached.get("values", [])]


def probe_cached(name: str, params: dict, cfg, data, model_config, out_dir: str) -> dict:
    """The representation probe attack on one model (vkd_jax.eval.probe), cached in eval/probe_<name>.json."""
    from vkd_jax.eval.probe import probe_attack
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(out_dir, "eval", f"probe_{name}.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached
    model = model_from_flat_params(abstract_model(model_config)[0], on_device(params))
    res = _none_for_nan(probe_attack(model, data.probe_data(), image_processor(cfg, model_config)))
    atomic_write_text(path, json.dumps(res, indent=2, sort_keys=True))
    return res


def add_forget_quality(results: dict, reference_eval: dict) -> None:
    """CLEAR's Forget Quality of the vanilla and the unlearned model: the KS test of their forget truth ratios
    against the retain-only reference model's (vkd_jax.eval.clear.forget_quality), into each model's
    official.eval_log_forget."""
    from vkd_jax.eval.clear import forget_quality

    ref = reference_eval.get("official", {}).get("eval_log_forget", {}).get("truth_ratios")
    results["reference"] = reference_eval
    for model in ("vanilla", "unlearned"):
        m = results[model].get("official", {}).get("eval_log_forget")
        if m is not None and ref:
            m["forget_quality"] = forget_quality(np.asarray(m["truth_ratios"]), np.asarray(ref))


# ---- relearning attack ---------------------------------------------------------------------------------------

def relearn_windows(n_keys: int, frac: float, cross_fit_from: float) -> list[list[int]]:
    """The attacks at fraction `frac` of `n_keys` forget questions (positions in their seeded order): one window of
    n = round(frac * n_keys) questions, or, for frac >= cross_fit_from, k = ceil(n_keys / (n_keys - n)) windows,
    each starting where the previous one's held-out block (the n_keys - n questions after it) starts, wrapping:
    the held-out blocks cover every question, so each is scored at least once (at one half, exactly once).
    Window 0 is the single attack's; every window is the same attack, only its held-out part moves."""
    n = min(n_keys - 1, max(1, int(round(frac * n_keys))))
    k = -(-n_keys // (n_keys - n)) if frac >= cross_fit_from else 1
    return [[(j * (n_keys - n) + i) % n_keys for i in range(n)] for j in range(k)]


def relearn_attack(cfg, data, params: dict, model_config, run_dir: str) -> dict:
    """Fine-tune the unlearned model on a fraction p of the forget VQA questions (all params, as an attacker
    would), then score forget VQA on the questions NOT used; AG = after - before (points), over every attack of
    the fraction (relearn_windows: several when cross-fitted, their held-out questions pooled)."""
    from vkd_jax.config_base import stage_seed
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    keys = data.relearn_keys()
    order = np.random.default_rng([stage_seed(cfg, "relearn"), 7]).permutation(len(keys))
    graphdef, _ = abstract_model(model_config)
    ecfg = eval_config(cfg)
    fractions = [float(f) for f in cfg.stages.relearn.fractions]
    out = {"fractions": fractions, "forget_vqa_cls_acc": [], "before": [], "ag": [], "ag_values": [], "attacks": [],
           "steps": int(cfg.stages.relearn.num_steps)}
    for frac in fractions:
        windows = relearn_windows(len(keys), frac, float(cfg.stages.relearn.cross_fit_from))
        results = []
        for j, window in enumerate(windows):
            used = [keys[order[i]] for i in window]
            rdir = relearn_dir(run_dir, frac, j)
            makedirs(rdir)
            cache = os.path.join(rdir, "result.json")
            r = read_json_if_exists(cache)
            if r is None:
                recs: list[dict] = []
                before = data.relearn_score(model_from_flat_params(graphdef, on_device(params)), ecfg, used, recs)
                name = f"forget@{frac:g}" + (f"/w{j}" if j else "")  # window 0: the seed of a single attack
                stream = build_pipeline(data, cfg, data.relearn_stream(used), stream_seed(cfg, "relearn", name),
                                        model_config)
                res = _stage("relearn", cfg, rdir, params, {"forget": stream}, model_config, data.tokenizer)
                after_recs: list[dict] = []
                after = data.relearn_score(model_from_flat_params(graphdef, res.params), ecfg, used, after_recs)
                write_predictions(os.path.join(rdir, "predictions.jsonl"),
                                  [{**x, "model": m} for m, rs in (("before", recs), ("after", after_recs))
                                   for x in rs])
                # the same questions in the same order before and after: per-question gains, clustered by person
                b, a = _relearn_values(data, recs), _relearn_values(data, after_recs)
                if [p for p, _ in b] != [p for p, _ in a]:
                    raise RuntimeError("relearning: the questions scored before and after differ")
                diffs = [[p, va - vb] for (p, vb), (_, va) in zip(b, a)]
                r = {"fraction": frac, "window": j, "n_used": len(used), "n_eval": len(keys) - len(used),
                     "before": before, "after": after, "ag_values": diffs}
                atomic_write_text(cache, json.dumps(r, indent=2))
            results.append(r)
        # pooled over the attacks, each weighted by the questions it scored
        w = np.asarray([r["n_eval"] for r in results], np.float64)
        w /= w.sum()
        before = float(np.dot(w, [r["before"] for r in results]))
        after = float(np.dot(w, [r["after"] for r in results]))
        out["forget_vqa_cls_acc"].append(after)
        out["before"].append(before)
        out["ag"].append(after - before)
        out["ag_values"].append([tuple(v) for r in results for v in r.get("ag_values", [])])
        out["attacks"].append(len(results))
    return out


def relearn_dir(run_dir: str, frac: float, window: int) -> str:
    """Where the relearning attack at `frac` through window `window` (relearn_windows) keeps its stage and scores."""
    return os.path.join(run_dir, "relearn", f"p{frac:g}" + (f"-w{window}" if window else ""))


def _relearn_values(data, records) -> list[tuple[str, float]]:
    return data.question_values(records)[data.relearn_metric]


# ---- the pipeline ------------------------------------------------------------------------------------------

def _shared_fields() -> tuple[str, ...]:
    from vkd_jax.shipped import VANILLA_FIELDS

    return VANILLA_FIELDS + ("forget_ratio", "eval", "stages.reference", "vanilla_model")


def check_shared(cfg, shared: str) -> None:
    """`shared` (benchmark, vanilla and reference models, their evaluations) serves every run whose config agrees
    on its fields (the vanilla model's, the forget ratio, evaluation, reference model); it records them in
    shared/pipeline.json on first use, and a run that disagrees is an error naming the fields (instead of silently
    reusing another config's vanilla model)."""
    from vkd_jax.shipped import config_fields

    want = config_fields(cfg, _shared_fields())
    path = os.path.join(shared, "pipeline.json")
    have = read_json_if_exists(path)
    if have is None:
        if jax.process_index() == 0:
            atomic_write_text(path, json.dumps(want, indent=1, sort_keys=True))
        return
    want = json.loads(json.dumps(want))  # tuples as lists, as stored
    diff = [f"{k}: {have.get(k)!r} (shared) vs {want.get(k)!r} (config)" for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)]
    if diff:
        raise ValueError(f"{path}: this shared folder's vanilla model was made by another config ("
                         + "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
                         + "); use another work directory or the config it was made with")


def vanilla_params(cfg, data, shared: str, model_config) -> dict:
    """The shipped vanilla model whose fingerprint equals this config's (vkd_jax.shipped; `config.vanilla_model`),
    else init -> pretrain (embedded world only) -> vanilla fine-tune on all profiles, cached in `shared`."""
    from vkd_jax.shipped import vanilla_from_shipped

    if not is_complete_dir(os.path.join(shared, "vanilla")):
        shipped, why = vanilla_from_shipped(cfg, data, model_config)
        if jax.process_index() == 0:
            print(why, file=sys.stderr, flush=True)
        if shipped is not None:
            return shipped
    params = initial_params(cfg, data, shared, model_config)
    names = (["pretrain"] if cfg.data.source == "embedded" else []) + ["vanilla"]
    for name in names:
        if int(cfg.stages[name].num_steps) > 0:
            params = host_params(_stage(name, cfg, shared, params, stage_streams(name, data, cfg, model_config),
                                        model_config, data.tokenizer).params)
    return params


def split_dir(base: str, k: int) -> str:
    """Where forget split k keeps its stages and evaluations: `base` itself for split 0, base/split<k> else."""
    return base if k == 0 else os.path.join(base, f"split{k}")


def read_eval_values(data, out_dir: str, name: str) -> dict:
    """{set: {metric: [(person, value), ...]}} of a cached evaluation, from its predictions file."""
    from vkd_jax.io_utils import read_text

    by_set: dict[str, list] = {}
    for line in read_text(os.path.join(out_dir, "eval", f"{name}.predictions.jsonl")).splitlines():
        if line.strip():
            r = json.loads(line)
            by_set.setdefault(r["set"], []).append(r)
    return {s: data.question_values(recs) for s, recs in by_set.items()}


def uses_masks(cfg, method) -> bool:
    """Whether the unlearn stage of this config trains with saliency masks (so the masks stage runs)."""
    return bool(method.needs_masks or cfg.stages.unlearn.get("use_masks", False))


def uses_reference(cfg, method, benchmark: str) -> bool:
    """Whether the run trains the reference model: NPO's retain-only reference, and CLEAR's official reading
    (Forget Quality: the KS test against a model that never saw the forget set)."""
    official_clear = benchmark == "clear" and cfg.eval.clear_reading == "official"
    return bool((method.needs_reference and cfg.npo.get("reference", "retain") == "retain") or official_clear)


def run_split(cfg, data, vanilla: dict, reference, method, model_config, workdir: str, shared: str, *,
              relearn: bool) -> dict:
    """One forget split from the vanilla model: masks, unlearning, the evaluations, the relearning attack, the
    probe and the identity-free floor; its results and the per-question values the pooled results are made of."""
    run_dir, shared_dir = split_dir(workdir, data.split), split_dir(shared, data.split)
    makedirs(run_dir)
    masks = None
    if uses_masks(cfg, method):
        masks = _stage("masks", cfg, run_dir, vanilla, stage_streams("masks", data, cfg, model_config),
                       model_config, data.tokenizer).masks
    timing_path = os.path.join(run_dir, "unlearn", "timing.json")
    t = time.time()
    unlearned = host_params(_stage("unlearn", cfg, run_dir, vanilla, stage_streams("unlearn", data, cfg,
                                                                                  model_config),
                                   model_config, data.tokenizer, reference=reference, masks=masks).params)
    timing = read_json_if_exists(timing_path)
    if timing is None:  # first (uninterrupted or resumed) completion: record its wall time
        timing = {"unlearn_seconds": time.time() - t}
        atomic_write_text(timing_path, json.dumps(timing))
    out = {"split": data.split, "unlearn_seconds": timing["unlearn_seconds"], "unlearned_params": unlearned,
           "vanilla": evaluate_cached("vanilla", vanilla, cfg, data, model_config, shared_dir),
           "unlearned": evaluate_cached("unlearned", unlearned, cfg, data, model_config, run_dir)}
    out["values"] = {m: read_eval_values(data, d, m) for m, d in (("vanilla", shared_dir), ("unlearned", run_dir))}
    if masks is not None:
        from vkd_jax.unlearn.masks import kept_fraction

        out["masks"] = {"kept_fraction": kept_fraction(masks)}
    if relearn and cfg.stages.relearn.fractions:
        out["relearn"] = relearn_attack(cfg, data, unlearned, model_config, run_dir)
    if bool(cfg.eval.get("probe", True)):
        out["probe"] = {"vanilla": probe_cached("vanilla", vanilla, cfg, data, model_config, shared_dir),
                        "unlearned": probe_cached("unlearned", unlearned, cfg, data, model_config, run_dir)}
    out["floor"], out["floor_values"] = identity_free_floor_values(vanilla, cfg, data, model_config, shared_dir)
    return out


def pool_splits(data, splits: list[dict]) -> dict:
    """The run's results over its forget splits: every metric the mean over all splits' questions, its interval a
    bootstrap over people (a person evaluated in several splits is one cluster); per-split results beside."""
    from vkd_jax.eval.intervals import cluster_ci, with_intervals

    def pooled(model):
        out = {}
        for set_name in splits[0]["values"][model]:
            metrics = splits[0]["values"][model][set_name]
            values = {m: [v for s in splits for v in s["values"][model].get(set_name, {}).get(m, [])]
                      for m in metrics}
            res = with_intervals(values)
            for m, pairs in values.items():
                kind = m[:-len("_acc")] if m.endswith("_acc") else m.rsplit("_", 1)[0]
                res[f"{kind}_n"] = len(pairs)
            out[set_name] = _none_for_nan(res)
        if "official" in splits[0][model]:  # CLEAR's own reading: the benchmark's own forget split
            out["official"] = splits[0][model]["official"]
        return out

    res = {"vanilla": pooled("vanilla"), "unlearned": pooled("unlearned"), "change": {}}
    # unlearned - vanilla, question by question (both scored the same questions in the same order), by person
    for set_name, metrics in splits[0]["values"]["unlearned"].items():
        diffs = {}
        for m in metrics:
            pairs = []
            for s in splits:
                u = s["values"]["unlearned"].get(set_name, {}).get(m, [])
                v = s["values"]["vanilla"].get(set_name, {}).get(m, [])
                if [p for p, _ in u] != [p for p, _ in v]:
                    raise RuntimeError(f"split {s['split']}: the vanilla and unlearned {set_name} questions differ")
                pairs += [(p, a - b) for (p, a), (_, b) in zip(u, v)]
            diffs[m] = pairs
        res["change"][set_name] = {k: v for k, v in _none_for_nan(with_intervals(diffs, "change/")).items()}
    floor = [v for s in splits for v in s["floor_values"]]
    res["floors"] = {"chance_cls_acc": data.chance,
                     "identity_free_forget_vqa_cls_acc": float(np.mean([v for _, v in floor])) if floor
                     else splits[0]["floor"],
                     "identity_free_forget_vqa_cls_acc_ci95": list(cluster_ci(*zip(*floor), "floor")) if floor
                     else None}
    if all("relearn" in s for s in splits):
        r0 = splits[0]["relearn"]
        rl = {"fractions": r0["fractions"], "steps": r0["steps"], "attacks": r0["attacks"], "forget_vqa_cls_acc": [],
              "before": [], "ag": [], "ag_ci95": [], "n_eval": []}
        for i in range(len(r0["fractions"])):
            diffs = [v for s in splits for v in s["relearn"]["ag_values"][i]]
            weights = [len(s["relearn"]["ag_values"][i]) for s in splits]
            w = np.asarray(weights, np.float64) / max(sum(weights), 1)
            before = float(np.dot(w, [s["relearn"]["before"][i] for s in splits]))
            after = float(np.dot(w, [s["relearn"]["forget_vqa_cls_acc"][i] for s in splits]))
            rl["before"].append(before)
            rl["forget_vqa_cls_acc"].append(after)
            rl["ag"].append(after - before)
            rl["ag_ci95"].append(list(cluster_ci(*zip(*diffs), f"ag{i}")) if diffs else None)
            rl["n_eval"].append(len(diffs))
        res["relearn"] = rl
    if all("probe" in s for s in splits):
        res["probe"] = {m: pool_probe([s["probe"][m] for s in splits]) for m in ("vanilla", "unlearned")}
    res["splits"] = [{k: v for k, v in s.items() if k not in ("values", "floor_values", "unlearned_params")}
                     for s in splits]
    for s in res["splits"]:
        if "relearn" in s:
            s["relearn"] = {k: v for k, v in s["relearn"].items() if k != "ag_values"}
    return res


def pool_probe(runs: list[dict]) -> dict:
    """The probe's accuracies over splits: each split's held-out images (clustered by split and person)."""
    from vkd_jax.eval.intervals import with_intervals

    out = dict(runs[0])
    for key in ("n_forget_test", "n_retain_test"):
        out[key] = sum(int(r.get(key, 0)) for r in runs)
    for key in ("forget_acc", "retain_acc"):
        items = [(f"{k}/{lab}", 100.0 * c) for k, r in enumerate(runs) for lab, c in r.get(f"{key}_items", [])]
        if items:
            out.update(with_intervals({key: items}))
    for key in list(out):
        if key.endswith("_items"):
            out.pop(key)
    return out


def run(cfg, workdir: str, shared: str | None = None, *, relearn: bool = True,
        local_cache: str | None = None) -> dict:
    from vkd_jax.config_check import validate
    from vkd_jax.hub import resolve_hub_names
    from vkd_jax.unlearn.methods import make_method

    resolve_hub_names(cfg)  # repo ids typed for hf_dir / data.manual_dir -> their cached local folders
    validate(cfg)  # every bad field at once, before anything is written
    from vkd_jax.preflight import preflight

    preflight(cfg)  # a stage that cannot fit these devices: stop now, not hours into the run
    shared = shared or workdir
    makedirs(workdir)
    makedirs(shared)
    check_shared(cfg, shared)
    t_start = time.time()
    data = prepare_data(cfg, shared, local_cache)
    num_splits = int(cfg.splits) or data.num_splits()  # 0: every person of the world forgotten once
    split_data = [data.with_split(k) for k in range(num_splits)]  # a split too many: an error now
    model_config = build_model_config(cfg, data)
    vanilla = host_params(vanilla_params(cfg, data, shared, model_config))
    method = make_method(cfg.method, cfg.get(cfg.method, {}), data.tokenizer)
    reference = None
    official_clear = data.name == "clear" and cfg.eval.clear_reading == "official"
    if uses_reference(cfg, method, data.name):
        reference = host_params(_stage("reference", cfg, shared, initial_params(cfg, data, shared, model_config),
                                       stage_streams("reference", data, cfg, model_config), model_config,
                                       data.tokenizer).params)
    splits = [run_split(cfg, d, vanilla, reference, method, model_config, workdir, shared, relearn=relearn)
              for d in split_data]
    unlearned = splits[0]["unlearned_params"]  # the benchmark's own forget split: what hf_export holds
    results = {
        "benchmark": data.name,
        "method": cfg.method,
        "config": json.loads(cfg.to_json_best_effort()),
        "protocol": eval_config(cfg).protocol(),
        **pool_splits(data, splits),
    }
    if official_clear:
        add_forget_quality(results, evaluate_cached("reference", reference, cfg, data, model_config, shared))
    n_train, n_total = count_params(cfg.method_partition[cfg.method], cfg, model_config)
    seconds = [s["unlearn_seconds"] for s in splits]
    results["efficiency"] = {"unlearn_seconds": float(np.mean(seconds)), "unlearn_seconds_total": float(sum(seconds)),
                             "steps": int(cfg.stages.unlearn.num_steps), "trainable_params": n_train,
                             "total_params": n_total}
    if "masks" in splits[0]:
        results["masks"] = splits[0]["masks"]
    results["seconds_total"] = time.time() - t_start
    if jax.process_index() == 0:
        from vkd_jax import report

        atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
        report.write_report(results, workdir, curves_dirs={"unlearn": os.path.join(workdir, "unlearn"),
                                                            "vanilla": os.path.join(shared, "vanilla")})
        if cfg.export_hf:
            from vkd_jax.models.hf_io import save_hf_params

            template = data.tokenizer_dir
            # safetensors and shutil write local files: a remote hf_export is built locally, then uploaded
            with local_staging_dir(os.path.join(workdir, "hf_export"), overwrite=True) as out:
                save_hf_params(unlearned, model_config, out, template_hf_dir=template, overwrite=True,
                               dtype=str(cfg.get("export_dtype", "")) or None)
    return results
