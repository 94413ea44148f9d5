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

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from vkd_jax.io_utils import (
    atomic_write_text,
    is_complete_dir,
    local_cache_dir,
    local_staging_dir,
    makedirs,
    read_json_if_exists,
)

RESULT_METRICS = ("vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL", "qa_gen_rougeL")
SETS = ("forget", "test", "retain", "celebrity")


# ---- data ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Data:
    manual_dir: str
    tfds_dir: str
    tokenizer: object
    forget_pct: int

    def load(self, config: str):
        from vkd_jax.data import mllmu_bench

        return mllmu_bench.load(config, self.tfds_dir, self.manual_dir)


def benchmark_dir(shared: str, local_cache: str | None = None) -> str:
    """<shared>/benchmark, or its local cache when `shared` is remote (see the module docstring)."""
    return os.path.join(local_cache_dir(shared, local_cache), "benchmark")


def prepare_data(cfg, shared: str, local_cache: str | None = None) -> Data:
    from vkd_jax.data import synthetic
    from vkd_jax.data.tokenizer import load_tokenizer, train_tokenizer

    forget_pct = int(cfg.forget_ratio)
    if forget_pct not in (5, 10, 15):
        raise ValueError(f"config.forget_ratio={cfg.forget_ratio}: MLLMU-Bench has forget_5, forget_10, forget_15")
    bench = benchmark_dir(shared, local_cache)
    if cfg.data.source == "embedded":
        manual = os.path.join(bench, "raw")
        world = synthetic.WorldConfig(**cfg.data.world.to_dict())
        if not os.path.isfile(os.path.join(manual, "world.json")):
            logging.info("generating the embedded benchmark in %s", manual)
            synthetic.generate(manual, seed=int(cfg.data.world_seed), cfg=world)
        else:
            _check_world(os.path.join(manual, "world.json"), world, int(cfg.data.world_seed))
        tok_dir = os.path.join(bench, "tokenizer")
        if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
            train_tokenizer(synthetic.benchmark_texts(manual), tok_dir)
        tok = load_tokenizer(tok_dir)
    elif cfg.data.source == "mllmu":
        manual = cfg.data.manual_dir
        if not manual or not os.path.isdir(manual):
            raise FileNotFoundError(f"config.data.manual_dir={manual!r}: the downloaded MLLMU-Bench folder is needed "
                                    "(nothing is downloaded at run time)")
        if not cfg.hf_dir:
            raise ValueError("config.hf_dir: the HF LLaVA folder (weights + tokenizer) is needed for mllmu runs")
        tok = load_tokenizer(cfg.hf_dir)
    else:
        raise ValueError(f"config.data.source={cfg.data.source!r}: use 'embedded' or 'mllmu'")
    tfds_dir = cfg.data.tfds_dir or os.path.join(bench, "tfds")
    return Data(manual, tfds_dir, tok, forget_pct)


def _check_world(path: str, world, seed: int) -> None:
    """A work directory's benchmark was generated from one world config; another one would silently mix."""
    with open(path) as f:
        stored = json.load(f)
    want = dataclasses.asdict(world)  # fields added since the benchmark was written read as their defaults
    have = {**dataclasses.asdict(type(world)()), **{k: v for k, v in stored.get("config", {}).items() if k in want}}
    diff = [f"{k}: {have[k]!r} (stored) vs {want[k]!r} (config)" for k in want if have[k] != want[k]]
    if int(stored.get("seed", seed)) != seed:
        diff.insert(0, f"world_seed: {stored.get('seed')} (stored) vs {seed} (config)")
    if diff:
        raise ValueError(f"{path}: the work directory's embedded benchmark was generated from another world "
                         f"config.data.world ({'; '.join(diff)}); use a fresh work directory")


def _pipeline(data: Data, cfg, source, *, tasks, types, seed_offset: int, keys=None, model_config=None,
              resample_options: bool = False):
    from vkd_jax.data.pipeline import InputPipeline, PipelineConfig

    mc = model_config
    pcfg = PipelineConfig(tasks=tuple(tasks), types=tuple(types), train=True,
                          global_batch_size=int(cfg.data.batch_size), max_len=int(cfg.data.max_len) or None,
                          length_buckets=tuple(cfg.data.get("length_buckets", PipelineConfig.length_buckets)),
                          padding_side="right", shuffle=True, seed=int(cfg.seed) * 1000 + seed_offset,
                          num_epochs=None, image_seq_length=mc.image_seq_length,
                          image=image_processor(cfg, mc), num_threads=int(cfg.data.num_threads),
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          keys=None if keys is None else tuple(keys), resample_options=resample_options,
                          cls_answer=str(cfg.data.get("cls_answer", "letter")))
    return InputPipeline(source, data.tokenizer, pcfg)


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


def generic_images_dir(data: Data, cfg) -> str:
    """The folder of generic (non-evaluation) images: config.data.generic_images, else the embedded world's own."""
    from vkd_jax.data.synthetic import GENERIC_DIR

    d = str(cfg.data.get("generic_images", "") or "")
    if d:
        return d
    if cfg.data.source == "embedded":
        d = os.path.join(data.manual_dir, GENERIC_DIR)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d}: the embedded benchmark has no generic images; set "
                                    "config.data.world.num_generic > 0 (with a fresh work directory)")
        return d
    raise ValueError("config.vkd.b_g > 0 needs config.data.generic_images: a local folder of images outside "
                     "every MLLMU-Bench split")


def _method_streams(cfg) -> tuple[str, ...]:
    """The streams the configured unlearning method reads (as run_stage will build it)."""
    import ml_collections

    from vkd_jax.unlearn.methods import make_method

    return make_method(cfg.method, ml_collections.ConfigDict(dict(cfg.get(cfg.method, {}) or {}))).streams


def stage_streams(name: str, data: Data, cfg, model_config) -> dict:
    """The training streams each stage reads (infinite, resumable); VQA and QA never share a batch."""
    from vkd_jax.data.sources import ConcatSource, ImageFolderSource, PoseJoinedSource

    all_tasks = tuple(cfg.data.get("train_tasks", ("ft", "classification", "generation", "cloze")))
    vqa, qa = ("Image_Textual",), ("Pure_Text",)
    resample = bool(cfg.data.get("resample_options", False))
    mk = lambda src, tasks, types, off: _pipeline(data, cfg, src, tasks=tasks, types=types, seed_offset=off,  # noqa
                                                  model_config=model_config, resample_options=resample)
    retain_name = f"retain_{100 - data.forget_pct}"
    out = {}
    if name in ("pretrain", "vanilla", "reference") and "caption" in tuple(cfg.stages[name].get("streams", ())):
        # generic images with their captions (captions.json): what each one shows, in the embedded world the
        # shapes, tones and slots identity is made of (stands in for the pretrained CLIP tower of a real LLaVA)
        src = ImageFolderSource(generic_images_dir(data, cfg))
        if src.captions is None:
            raise ValueError(f"stages.{name}.streams has 'caption': {src.folder} needs a captions.json")
        out["caption"] = mk(src, ("ft",), vqa, {"pretrain": 3, "vanilla": 13, "reference": 23}[name])
    if name == "pretrain":  # the celebrities, before any profile (stands in for LLaVA's own pretraining)
        src = data.load("Retain_Set")
        return {"vqa": mk(src, all_tasks, vqa, 1), "qa": mk(src, all_tasks, qa, 2), **out}
    if name in ("vanilla", "reference"):  # every training pose with every question form, plus the celebrities
        profiles = data.load("Full_Set" if name == "vanilla" else retain_name)
        celebs = [data.load("Retain_Set")] * int(cfg.data.get("celebrity_repeat", 1))  # keep them known
        src = ConcatSource([PoseJoinedSource(data.load("ft_Data"), profiles), *celebs])
        off = 10 if name == "vanilla" else 20
        return {"vqa": mk(src, all_tasks, vqa, off + 1), "qa": mk(src, all_tasks, qa, off + 2), **out}
    if name in ("masks", "unlearn"):  # the forget/retain people's fine-tuning pairs with their images
        ft = data.load("ft_Data")
        forget = PoseJoinedSource(ft, data.load(f"forget_{data.forget_pct}"))
        retain = PoseJoinedSource(ft, data.load(retain_name))
        out.update(forget=mk(forget, ("ft",), vqa, 31), retain=mk(retain, ("ft",), vqa, 32))
        if name == "unlearn" and "generic" in _method_streams(cfg):  # images outside every split (VKD's b_g)
            out["generic"] = mk(ImageFolderSource(generic_images_dir(data, cfg)), ("ft",), vqa, 33)
        return out
    raise ValueError(name)


# ---- models and stages -------------------------------------------------------------------------------------

def build_model_config(cfg, data: Data):
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


def initial_params(cfg, data: Data, shared: str, model_config) -> dict:
    from flax import nnx

    from vkd_jax.models.hf_io import flat_params, load_hf
    from vkd_jax.models.llava import Llava
    from vkd_jax.models.orbax_io import load_model_orbax, save_model_orbax

    ckpt = os.path.join(shared, "init")
    if is_complete_dir(ckpt):
        return flat_params(load_model_orbax(ckpt))
    model = load_hf(cfg.hf_dir, dtype=cfg.dtype, param_dtype=cfg.param_dtype or None) if cfg.hf_dir else \
        Llava(model_config, rngs=nnx.Rngs(int(cfg.seed)))
    save_model_orbax(model, ckpt)
    return flat_params(model)


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


def eval_sets(data: Data, cfg):
    from vkd_jax.data.pipeline import forget_ids
    from vkd_jax.eval import benchmark_sets
    from vkd_jax.eval.evaluator import EvalSet

    sets = benchmark_sets(data.tfds_dir, data.manual_dir, forget_pct=data.forget_pct)
    n = int(cfg.eval.get("retain_max_profiles", 0) or 0)
    if n:  # the retain split is large; a fixed, seeded subset of its profiles keeps evaluation fast
        src = sets["retain"].source
        ids = sorted(forget_ids(src))  # all profile IDs of the source
        pick = np.random.default_rng(int(cfg.seed) + 99).permutation(len(ids))[:n]
        sets["retain"] = EvalSet(src, tuple(sorted(ids[i] for i in pick)))
    return sets


def evaluate_cached(name: str, params: dict, cfg, data: Data, model_config, out_dir: str) -> dict:
    from vkd_jax.eval import evaluate
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(out_dir, "eval", f"{name}.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached
    graphdef, _ = abstract_model(model_config)
    model = model_from_flat_params(graphdef, params)
    ecfg = eval_config(cfg)
    t = time.time()
    records: dict[str, list] = {}
    res = evaluate(model, data.tokenizer, eval_sets(data, cfg), ecfg, records=records,
                   demo_source=data.load("Full_Set") if ecfg.few_shot else None)
    logging.info("evaluated %s in %.1f s", name, time.time() - t)
    res = {s: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
           for s, m in res.items()}
    # the predictions first: the metrics file marks the evaluation finished
    write_predictions(os.path.join(out_dir, "eval", f"{name}.predictions.jsonl"),
                      [r for s in res for r in records.get(s, [])])
    atomic_write_text(path, json.dumps(res, indent=2, sort_keys=True))
    return res


def identity_free_floor(params: dict, cfg, data: Data, model_config, shared: str) -> float:
    """Forget VQA accuracy of a model shown the mean image instead of the person: what the frozen LLM answers
    without identity (the floor a well-forgotten model should sit at, rather than far below chance)."""
    from vkd_jax.data.sources import ImageReplacedSource, mean_image_bytes
    from vkd_jax.eval.evaluator import evaluate_questions
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    path = os.path.join(shared, "eval", "identity_free_floor.json")
    cached = read_json_if_exists(path)
    if cached is not None:
        return cached["forget_vqa_cls_acc"]
    forget = data.load(f"forget_{data.forget_pct}")
    blank = ImageReplacedSource(forget, mean_image_bytes(data.load("Full_Set")))
    model = model_from_flat_params(abstract_model(model_config)[0], params)
    records: list[dict] = []
    acc = evaluate_questions(model, data.tokenizer, blank, eval_config(cfg), records=records)["vqa_cls_acc"]
    write_predictions(os.path.join(shared, "eval", "identity_free_floor.predictions.jsonl"), records)
    atomic_write_text(path, json.dumps({"forget_vqa_cls_acc": acc, "image": "mean of Full_Set images"}))
    return acc


# ---- relearning attack ---------------------------------------------------------------------------------------

def relearn_attack(cfg, data: Data, params: dict, model_config, run_dir: str) -> dict:
    """Fine-tune the unlearned model on a fraction p of the forget VQA classification questions (all params, as an
    attacker would), then score forget VQA on the questions NOT used; AG = after - before (points)."""
    from vkd_jax.eval.evaluator import evaluate_questions, question_keys
    from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

    forget = data.load(f"forget_{data.forget_pct}")
    keys = sorted(question_keys(forget, "classification", "Image_Textual"))
    order = np.random.default_rng(int(cfg.seed) + 7).permutation(len(keys))
    graphdef, _ = abstract_model(model_config)
    ecfg = eval_config(cfg)
    fractions = [float(f) for f in cfg.stages.relearn.fractions]
    out = {"fractions": fractions, "forget_vqa_cls_acc": [], "before": [], "ag": [], "steps":
           int(cfg.stages.relearn.num_steps)}
    for frac in fractions:
        n = max(1, int(round(frac * len(keys))))
        used = [keys[i] for i in order[:n]]
        rdir = os.path.join(run_dir, "relearn", f"p{frac:g}")
        makedirs(rdir)
        cache = os.path.join(rdir, "result.json")
        r = read_json_if_exists(cache)
        if r is None:
            recs: list[dict] = []
            before = evaluate_questions(model_from_flat_params(graphdef, params), data.tokenizer, forget, ecfg,
                                        exclude=used, records=recs)["vqa_cls_acc"]
            stream = _pipeline(data, cfg, forget, tasks=("classification",), types=("Image_Textual",),
                               seed_offset=40 + int(frac * 100), keys=used, model_config=model_config)
            res = _stage("relearn", cfg, rdir, params, {"forget": stream}, model_config, data.tokenizer)
            after_recs: list[dict] = []
            after = evaluate_questions(model_from_flat_params(graphdef, res.params), data.tokenizer, forget, ecfg,
                                       exclude=used, records=after_recs)["vqa_cls_acc"]
            write_predictions(os.path.join(rdir, "predictions.jsonl"),
                              [{**x, "model": m} for m, rs in (("before", recs), ("after", after_recs)) for x in rs])
            r = {"fraction": frac, "n_used": n, "n_eval": len(keys) - n, "before": before, "after": after}
            atomic_write_text(cache, json.dumps(r, indent=2))
        out["forget_vqa_cls_acc"].append(r["after"])
        out["before"].append(r["before"])
        out["ag"].append(r["after"] - r["before"])
    return out


# ---- the pipeline ------------------------------------------------------------------------------------------

def vanilla_params(cfg, data: Data, shared: str, model_config) -> dict:
    """init -> pretrain (embedded world only) -> vanilla fine-tune on all profiles; cached in `shared`."""
    params = initial_params(cfg, data, shared, model_config)
    names = (["pretrain"] if cfg.data.source == "embedded" else []) + ["vanilla"]
    for name in names:
        if int(cfg.stages[name].num_steps) > 0:
            params = _stage(name, cfg, shared, params, stage_streams(name, data, cfg, model_config), model_config,
                            data.tokenizer).params
    return params


def run(cfg, workdir: str, shared: str | None = None, *, relearn: bool = True,
        local_cache: str | None = None) -> dict:
    from vkd_jax.config_check import validate
    from vkd_jax.unlearn.methods import make_method

    validate(cfg)  # every bad field at once, before anything is written
    shared = shared or workdir
    makedirs(workdir)
    t_start = time.time()
    data = prepare_data(cfg, shared, local_cache)
    model_config = build_model_config(cfg, data)
    vanilla = vanilla_params(cfg, data, shared, model_config)
    method = make_method(cfg.method, cfg.get(cfg.method, {}), data.tokenizer)
    reference = None
    if method.needs_reference and cfg.npo.get("reference", "retain") == "retain":
        reference = _stage("reference", cfg, shared, initial_params(cfg, data, shared, model_config),
                           stage_streams("reference", data, cfg, model_config), model_config, data.tokenizer).params
    masks = None
    if method.needs_masks or cfg.stages.unlearn.get("use_masks", False):
        masks = _stage("masks", cfg, workdir, vanilla, stage_streams("masks", data, cfg, model_config),
                       model_config, data.tokenizer).masks
    timing_path = os.path.join(workdir, "unlearn", "timing.json")
    t = time.time()
    unlearned = _stage("unlearn", cfg, workdir, vanilla, stage_streams("unlearn", data, cfg, model_config),
                       model_config, data.tokenizer, reference=reference, masks=masks).params
    timing = read_json_if_exists(timing_path)
    if timing is None:  # first (uninterrupted or resumed) completion: record its wall time
        timing = {"unlearn_seconds": time.time() - t}
        atomic_write_text(timing_path, json.dumps(timing))
    unlearn_seconds = timing["unlearn_seconds"]
    results = {
        "method": cfg.method,
        "config": json.loads(cfg.to_json_best_effort()),
        "protocol": eval_config(cfg).protocol(),
        "vanilla": evaluate_cached("vanilla", vanilla, cfg, data, model_config, shared),
        "unlearned": evaluate_cached("unlearned", unlearned, cfg, data, model_config, workdir),
    }
    n_train, n_total = count_params(cfg.method_partition[cfg.method], cfg, model_config)
    results["efficiency"] = {"unlearn_seconds": unlearn_seconds, "steps": int(cfg.stages.unlearn.num_steps),
                             "trainable_params": n_train, "total_params": n_total}
    if masks is not None:
        from vkd_jax.unlearn.masks import kept_fraction

        results["masks"] = {"kept_fraction": kept_fraction(masks)}
    if relearn and cfg.stages.relearn.fractions:
        results["relearn"] = relearn_attack(cfg, data, unlearned, model_config, workdir)
    results["floors"] = {"chance_cls_acc": 25.0,
                         "identity_free_forget_vqa_cls_acc": identity_free_floor(vanilla, cfg, data, model_config,
                                                                                 shared)}
    results["seconds_total"] = time.time() - t_start
    if jax.process_index() == 0:
        from vkd_jax import report

        atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2, sort_keys=True))
        report.write_report(results, workdir, curves_dirs={"unlearn": os.path.join(workdir, "unlearn"),
                                                            "vanilla": os.path.join(shared, "vanilla")})
        if cfg.export_hf:
            from vkd_jax.models.hf_io import save_hf_params

            template = cfg.hf_dir or os.path.join(benchmark_dir(shared, local_cache), "tokenizer")
            # safetensors and shutil write local files: a remote hf_export is built locally, then uploaded
            with local_staging_dir(os.path.join(workdir, "hf_export"), overwrite=True) as out:
                save_hf_params(unlearned, model_config, out, template_hf_dir=template, overwrite=True,
                               dtype=str(cfg.get("export_dtype", "")) or None)
    return results
