"""MLLMU-Bench evaluation (shared/spec/mllmu_bench.md): classification, cloze and generation, each as VQA (with the
profile's image) and QA (text only), on the forget, test, retain and celebrity sets; greedy decoding
(`vkd_jax.eval.decode`), zero-shot by default, few-shot a switch.

    from vkd_jax.eval import EvalConfig, benchmark_sets, evaluate
    sets = benchmark_sets(data_dir, manual_dir, forget_pct=5)   # forget_5, Test_Set (forget IDs), retain_95, Retain_Set
    results = evaluate(model, tokenizer, sets, EvalConfig())    # {set: {metric: value}}

Results schema, per set ("forget", "test", "retain", "celebrity"):
    vqa_cls_acc, qa_cls_acc, vqa_cloze_acc, qa_cloze_acc   accuracy in % (0..100)
    vqa_gen_rougeL, qa_gen_rougeL                          mean ROUGE-L F-measure (0..1)
    extras: {vqa,qa}_gen_{rouge1,rouge2,bleu} (0..1), and {kind}_n, the number of questions behind each
    `{kind}_*` value (kind = vqa_cls, qa_cls, vqa_cloze, qa_cloze, vqa_gen, qa_gen). A kind with no questions
    scores NaN with n = 0.

Examples come from the same code as training (`pipeline._profile_examples` -> `prompts`), so prompts are identical;
the Test_Set pose is chosen exactly as the input pipeline chooses it (`default_rng([seed, row])`). Batches hold one
kind each (VQA rows one image each, QA rows none), are left-padded to a length bucket and filled to `batch_size`
with copies of their first row, so only a few shapes are ever compiled.

Classification is scored as the benchmark does (greedy answer, its first letter) unless `cls_scoring="likelihood"`:
then the prediction is the option whose text, as the answer to the same prompt, is likeliest (summed log-probs of
its tokens and EOS). That is for models trained to answer with the option's text (the embedded tiny model, which
does not learn to bind letters to options); report which scoring a table used.

Few-shot (`EvalConfig.few_shot`): each prompt is preceded by solved demonstrations in the same conversation
format, `"{demo prompt} {answer}\n"`; classification uses `few_shot_cls` demo profiles (1), cloze `few_shot_cloze`
(2), generation stays zero-shot. Demo profiles are drawn (seeded) from `demo_set` (default "retain"), from that
profile's first question of the same kind; VQA demos carry their own image. Profiles used as demos are left out
when the demo set itself is evaluated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from flax import nnx

from vkd_jax.data import prompts
from vkd_jax.data.pipeline import _profile_examples, _s, image_config
from vkd_jax.eval import metrics
from vkd_jax.eval.decode import continuation_logprobs, greedy_decode, strip_after_eos
from vkd_jax.preprocess import ImageProcessorConfig, preprocess_one

SETS = ("forget", "test", "retain", "celebrity")
TASK_KEYS = {"classification": "cls", "cloze": "cloze", "generation": "gen"}
TYPE_KEYS = {"Image_Textual": "vqa", "Pure_Text": "qa"}
METRICS = ("vqa_cls_acc", "qa_cls_acc", "vqa_cloze_acc", "qa_cloze_acc", "vqa_gen_rougeL", "qa_gen_rougeL")
EXTRA_METRICS = tuple(f"{t}_gen_{m}" for t in ("vqa", "qa") for m in ("rouge1", "rouge2", "bleu"))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("classification", "cloze", "generation")
    types: tuple[str, ...] = ("Image_Textual", "Pure_Text")
    max_new_tokens: int = 50                 # the benchmark's budget, for every task
    batch_size: int = 8
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 768, 1024, 1536, 2048)
    seed: int = 0                            # Test_Set pose choice (as the input pipeline) and few-shot demos
    image: ImageProcessorConfig | None = None  # default: CLIP preprocessing at the model's image size
    few_shot: bool = False
    few_shot_cls: int = 1
    few_shot_cloze: int = 2
    demo_set: str = "retain"
    max_questions: int | None = None         # per set and kind (first ones, in source order): quick checks
    # "generate": the benchmark's protocol (greedy answer, first letter); "likelihood": the letter whose option text
    # is the likeliest answer (for models trained to answer with the option, PipelineConfig.cls_answer="option")
    cls_scoring: str = "generate"

    def __post_init__(self):
        bad = (set(self.tasks) - set(TASK_KEYS)) | (set(self.types) - set(TYPE_KEYS))
        if bad:
            raise ValueError(f"EvalConfig: unknown tasks/types {sorted(bad)}; tasks {tuple(TASK_KEYS)}, "
                             f"types {tuple(TYPE_KEYS)}")
        if self.cls_scoring not in ("generate", "likelihood"):
            raise ValueError(f"EvalConfig.cls_scoring={self.cls_scoring!r}: use 'generate' or 'likelihood'")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig: batch_size={self.batch_size} and max_new_tokens={self.max_new_tokens} "
                             "must be >= 1")


@dataclasses.dataclass
class EvalSet:
    """A random-access source of profile records (e.g. `mllmu_bench.load(...)`), optionally restricted to IDs."""
    source: Any
    ids: tuple[str, ...] | None = None


def benchmark_sets(data_dir, manual_dir=None, forget_pct: int = 5) -> dict[str, EvalSet]:
    """The four evaluation sets of the protocol from TFDS `mllmu_bench` (prepared from manual_dir on first use)."""
    from vkd_jax.data import mllmu_bench
    from vkd_jax.data.pipeline import forget_ids
    if forget_pct not in (5, 10, 15):
        raise ValueError(f"forget_pct must be 5, 10 or 15, got {forget_pct}")
    load = lambda c: mllmu_bench.load(c, data_dir, manual_dir)  # noqa: E731
    forget = load(f"forget_{forget_pct}")
    return {"forget": EvalSet(forget), "test": EvalSet(load("Test_Set"), forget_ids(forget)),
            "retain": EvalSet(load(f"retain_{100 - forget_pct}")), "celebrity": EvalSet(load("Retain_Set"))}


def question_keys(source, task: str = "classification", type: str = "Image_Textual",
                  ids: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """(profile ID, item) of every question of one kind, in source order; `item` is the index within the profile's
    questions of that task and type, as the input pipeline's `id`/`item` metadata. Used to split the forget VQA
    questions into the ones a relearning attack trains on and the ones it is evaluated on."""
    return [(e["id"], e["item"]) for e in _examples(EvalSet(source, _tuple(ids)), task, type)]


# ----------------------------------------------------------------------------------------------- examples

def _tuple(ids):
    return None if ids is None else tuple(ids)


def _examples(es: EvalSet, task: str, typ: str) -> list[dict]:
    keep = set(es.ids) if es.ids is not None else None
    out = []
    for row in range(len(es.source)):
        rec = es.source[row]
        if keep is not None and _s(rec["ID"]) not in keep:
            continue
        for ex in _profile_examples(rec, (task,), (typ,)):
            if ex["task"] == task:
                ex["row"] = row
                out.append(ex)
    return out


def _image_bytes(source, row: int, seed: int) -> bytes:
    rec = source[row]
    imgs = rec.get("images")
    if imgs is not None and len(imgs["bytes"]):  # Test_Set: one pose per profile, chosen as the input pipeline does
        return bytes(imgs["bytes"][np.random.default_rng([seed, row]).integers(len(imgs["bytes"]))])
    return bytes(rec["image"]["bytes"])


@dataclasses.dataclass
class _Demos:
    prefix: str
    images: list[tuple[Any, int]]  # (source, row) of each demo image, in prompt order
    ids: set


def _demos(demo: EvalSet | None, task: str, typ: str, k: int, seed: int) -> _Demos:
    if demo is None or k == 0 or task == "generation":
        return _Demos("", [], set())
    by_profile: dict[str, dict] = {}
    for ex in _examples(demo, task, typ):
        by_profile.setdefault(ex["id"], ex)
    if len(by_profile) < k:
        raise ValueError(f"few-shot needs {k} demo profiles with {task}/{typ} questions, the demo set has "
                         f"{len(by_profile)}")
    pids = sorted(by_profile)
    chosen = [pids[i] for i in np.random.default_rng([seed, 31337]).choice(len(pids), k, replace=False)]
    prefix, images = "", []
    for pid in chosen:
        ex = by_profile[pid]
        prefix += f"{ex['prompt']} {ex['answer']}\n"
        if typ == "Image_Textual":
            images.append((demo.source, ex["row"]))
    return _Demos(prefix, images, set(chosen))


# ----------------------------------------------------------------------------------------------- decoding

def _bucket(n: int, buckets: Sequence[int], what: str) -> int:
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"{what} has {n} prompt tokens, longer than the largest length bucket {max(buckets)}; "
                     "raise EvalConfig.length_buckets")


class _Runner:
    """Tokenizes prompts, batches them with static shapes and decodes them greedily."""

    def __init__(self, model, tokenizer, cfg: EvalConfig):
        c = model.config
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.split = nnx.split(model)
        self.image_seq_length, self.image_token = c.image_seq_length, c.image_token_index
        self.image_cfg = cfg.image or image_config(c.vision.image_size)
        self._pixels: dict = {}
        # pad slots are masked, but the model finds images by id: never pad with the image token
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id != self.image_token else tokenizer.eos_id

    def _ids(self, prompt: str, answer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of a prompt (and answer + EOS), the tokenizer's <image> id mapped to the model's, and the
        answer mask."""
        t = prompts.tokenize(self.tok, prompt, answer, self.image_seq_length)
        ids = t.input_ids
        if self.tok.image_token_id != self.image_token:  # tokenizer's <image> id -> the model's image token
            ids = np.where(ids == self.tok.image_token_id, self.image_token, ids)
        return ids, t.loss_mask

    def _pixel(self, source, row: int) -> np.ndarray:
        key = (id(source), row)
        if key not in self._pixels:
            data = _image_bytes(source, row, self.cfg.seed)
            try:
                self._pixels[key] = preprocess_one(data, self.image_cfg)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"profile {_s(source[row]['ID'])} (source row {row}): cannot decode its image "
                                 f"({type(e).__name__}: {e})") from None
        return self._pixels[key]

    def _batches(self, toks: list[np.ndarray], items: list[dict], source, demos: _Demos, with_image: bool):
        """Left-padded static-shape batches of the token rows `toks` (row j belongs to `items[j]`): yields
        (indices into toks, ids [B, T], mask [B, T], pixel_values or None); similar lengths share a batch."""
        B = self.cfg.batch_size
        order = np.argsort([len(t) for t in toks], kind="stable")
        for start in range(0, len(toks), B):
            idx = order[start:start + B]
            rows = list(idx) + [idx[0]] * (B - len(idx))  # fill with copies of the first row (static batch)
            T = _bucket(max(len(toks[i]) for i in idx), self.cfg.length_buckets,
                        f"{items[idx[0]]['task']} question of profile {items[idx[-1]]['id']}")
            ids = np.full((B, T), self.pad_id, np.int32)
            mask = np.zeros((B, T), np.int32)
            for b, i in enumerate(rows):
                ids[b, T - len(toks[i]):], mask[b, T - len(toks[i]):] = toks[i], 1
            n_img = (1 + len(demos.images)) if with_image else 0
            bad = np.nonzero((ids == self.image_token).sum(1) != n_img * self.image_seq_length)[0]
            if len(bad):  # under jit the model cannot check this itself
                raise ValueError(f"profile {items[rows[bad[0]]]['id']}: prompt holds "
                                 f"{int((ids[bad[0]] == self.image_token).sum())} image tokens (id "
                                 f"{self.image_token}), expected {n_img} x {self.image_seq_length}")
            px = None
            if with_image:
                px = np.stack([self._pixel(s, r) for i in rows
                               for s, r in demos.images + [(source, items[i]["row"])]])
            yield idx, rows, ids, mask, px

    def generate(self, items: list[dict], source, demos: _Demos, with_image: bool) -> list[str]:
        """items: examples with 'prompt' and 'row' -> generated texts (special tokens dropped, stripped)."""
        toks = [self._ids(demos.prefix + ex["prompt"])[0] for ex in items]
        texts: list[str] = [""] * len(items)
        for idx, _, ids, mask, px in self._batches(toks, items, source, demos, with_image):
            out = greedy_decode(self.model, ids, mask, px, max_new_tokens=self.cfg.max_new_tokens,
                                eos_id=self.tok.eos_id, pad_id=self.pad_id, split=self.split)
            for b, seq in enumerate(strip_after_eos(out[:len(idx)], self.tok.eos_id)):
                texts[idx[b]] = self.tok.decode(seq, skip_special_tokens=True).strip()
        return texts

    def choose(self, items: list[dict], source, demos: _Demos, with_image: bool) -> list[str]:
        """Multiple-choice items -> the letter whose option text is the likeliest answer: log p(" {option}" + EOS
        | the classification prompt), summed over the answer tokens (cls_scoring="likelihood")."""
        toks, masks, owner = [], [], []
        for j, ex in enumerate(items):
            for L in "ABCD":
                ids, lm = self._ids(demos.prefix + ex["prompt"], ex["options"][L])
                toks.append(ids), masks.append(lm), owner.append(j)
        seq_items = [items[j] for j in owner]
        scores = np.zeros(len(toks))
        for idx, rows, ids, mask, px in self._batches(toks, seq_items, source, demos, with_image):
            tgt = np.zeros(ids.shape, bool)
            for b, i in enumerate(rows):
                tgt[b, ids.shape[1] - len(masks[i]):] = masks[i]
            scores[idx] = continuation_logprobs(self.model, ids, mask, tgt, px, split=self.split)[:len(idx)]
        return ["ABCD"[int(np.argmax(scores[4 * j:4 * j + 4]))] for j in range(len(items))]


# ----------------------------------------------------------------------------------------------- scoring

def _score(task: str, ex: dict, text: str) -> dict[str, float]:
    if task == "classification":
        return {"acc": 100.0 * metrics.classification_correct(text, ex["correct_letter"])}
    if task == "cloze":
        return {"acc": 100.0 * metrics.cloze_correct(text, ex["ground_truth"])}
    return {**metrics.rouge(text, ex["ground_truth"]), "bleu": metrics.sentence_bleu(text, ex["ground_truth"])}


def _kind_metrics(task: str, typ: str, scores: list[dict]) -> dict[str, float]:
    kind = f"{TYPE_KEYS[typ]}_{TASK_KEYS[task]}"
    names = ("acc",) if task != "generation" else ("rougeL", "rouge1", "rouge2", "bleu")
    out = {f"{kind}_{m}": float(np.mean([s[m] for s in scores])) if scores else math.nan for m in names}
    out[f"{kind}_n"] = len(scores)
    return out


def _eval_kind(runner: _Runner, es: EvalSet, task: str, typ: str, demos: _Demos,
               include=None, exclude=None, records: list | None = None) -> list[dict]:
    items = [ex for ex in _examples(es, task, typ) if ex["id"] not in demos.ids]
    if include is not None:
        inc = set(map(tuple, include))
        items = [ex for ex in items if (ex["id"], ex["item"]) in inc]
    if exclude is not None:
        exc = set(map(tuple, exclude))
        items = [ex for ex in items if (ex["id"], ex["item"]) not in exc]
    if runner.cfg.max_questions is not None:
        items = items[:runner.cfg.max_questions]
    if not items:
        return []
    if task == "classification" and runner.cfg.cls_scoring == "likelihood":
        texts = runner.choose(items, es.source, demos, typ == "Image_Textual")
    else:
        texts = runner.generate(items, es.source, demos, typ == "Image_Textual")
    scores = [_score(task, ex, t) for ex, t in zip(items, texts)]
    if records is not None:
        for ex, t, s in zip(items, texts, scores):
            records.append({"id": ex["id"], "task": task, "type": typ, "item": ex["item"],
                            "question": ex["question"], "generated": t,
                            "target": ex["correct_letter"] or ex["ground_truth"], **s})
    return scores


def _as_set(s) -> EvalSet:
    return s if isinstance(s, EvalSet) else EvalSet(s)


def evaluate(model, tokenizer, sets: Mapping[str, Any], cfg: EvalConfig = EvalConfig(),
             records: dict[str, list] | None = None) -> dict[str, dict[str, float]]:
    """{set name: {metric: value}} (schema in the module docstring) for every set given; a set is an `EvalSet` or
    a bare source. Pass `records={}` to also get, per set, every question's generated text and score."""
    runner = _Runner(model, tokenizer, cfg)
    demo_set = _as_set(sets[cfg.demo_set]) if cfg.few_shot and cfg.demo_set in sets else None
    if cfg.few_shot and demo_set is None:
        raise ValueError(f"few-shot needs the demo set {cfg.demo_set!r} among the sets ({sorted(sets)})")
    results = {}
    for name, s in sets.items():
        es = _as_set(s)
        runner._pixels.clear()  # preprocessed images are reused across one set's tasks only (host memory)
        out: dict[str, float] = {}
        rec = records.setdefault(name, []) if records is not None else None
        for task in cfg.tasks:
            k = {"classification": cfg.few_shot_cls, "cloze": cfg.few_shot_cloze}.get(task, 0) if cfg.few_shot else 0
            for typ in cfg.types:
                demos = _demos(demo_set, task, typ, k, cfg.seed)
                if name != cfg.demo_set:
                    demos = dataclasses.replace(demos, ids=set())
                out.update(_kind_metrics(task, typ, _eval_kind(runner, es, task, typ, demos, records=rec)))
        results[name] = out
    return results


def evaluate_questions(model, tokenizer, source, cfg: EvalConfig = EvalConfig(), *, task: str = "classification",
                       type: str = "Image_Textual", include: Iterable[tuple[str, int]] | None = None,
                       exclude: Iterable[tuple[str, int]] | None = None, ids: Iterable[str] | None = None
                       ) -> dict[str, float]:
    """One kind of question on a subset (keys from `question_keys`), zero-shot: e.g. forget VQA classification on
    the forget questions NOT used for relearning:
        keys = question_keys(forget_src); used = keys[:n_relearn]
        acc = evaluate_questions(model, tok, forget_src, cfg, exclude=used)["vqa_cls_acc"]"""
    runner = _Runner(model, tokenizer, dataclasses.replace(cfg, few_shot=False))
    scores = _eval_kind(runner, EvalSet(source, _tuple(ids)), task, type, _Demos("", [], set()), include, exclude)
    return _kind_metrics(task, type, scores)


def forget_vqa_accuracy(model, tokenizer, forget_source, cfg: EvalConfig = EvalConfig(),
                        exclude: Iterable[tuple[str, int]] | None = None) -> float:
    """Forget VQA classification accuracy (%) on the questions not in `exclude` (the relearning attack's AG)."""
    return evaluate_questions(model, tokenizer, forget_source, cfg, exclude=exclude)["vqa_cls_acc"]
