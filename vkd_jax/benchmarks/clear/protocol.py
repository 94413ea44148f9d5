"""CLEAR evaluation, both readings (shared/spec/clear.md):

"followup" (default; how MMUnlearner and the VKD paper report CLEAR):
- VQA (forget: forget{NN}_perturbed; retain: retain{NN}_perturbed, `clear.retain_perturbed_for`): name recognition
  as multiple choice. The question is the row's `question` or "What is the name of the person in the image?"; the
  options are the `perturbed_names` with the true `name` inserted at a random position (seeded), listed
  "A. opt\\nB. opt..."; the prompt is LLaVA-1.5's chat template around `{question}\\n{options}\\n`
  (`chat_prompt`: "USER: <image>\\n{text} ASSISTANT:"); greedy, 50 new tokens; the reply's first alphanumeric
  character, upper-cased, must be the true letter (`cls_scoring="likelihood"`: the likeliest option text instead).
- QA (forget{NN}+tofu / retain{NN}+tofu text rows): the greedy answer to "USER: {question} ASSISTANT:", ROUGE-L F
  (stemmed) and BLEU against `answer`, each answer scored itself (MMUnlearner's script scores every QA answer
  against the last VQA reply, a bug not reproduced).
- real_faces, real_world: multiple choice over `options` plus the true `answer`, as VQA.
"official" (the benchmark's own code, somvy/multimodal_unlearning mm/eval.py + calculate_metrics.py), six tasks:
forget/retain captions (`eval_log_forget` on forget{NN}_perturbed, `eval_log` on retain_perturbed; a caption
question drawn (seeded) from `CAPTION_QUESTIONS`), forget/retain face recognition (the prompt `FACE_PROMPT`, the
name against `perturbed_names`), real_faces and real_world (the answer against `options`), at most 300 rows each:
- ROUGE-L recall (stemmed) of a greedy generation (300 new tokens) against the answer. Their generation decodes
  the prompt with special tokens skipped and re-encodes it, so the model is given no image: we do the same
  (`official_text_only=True`, their reading) or pass the image (False);
- Prob: captions mean exp(-per-token NLL of the answer); other tasks mean p / (p + sum of the perturbed p), p =
  exp(-per-token NLL);
- Truth Ratio: TR_i = exp(P - NLL(paraphrase_i)) with P one scalar, the mean per-token NLL of every perturbed
  answer of every row; reported as mean(min(TR, 1/TR)) on forget tasks, mean(max(0, 1 - 1/TR)) elsewhere;
- Forget Quality: the KS-test p-value (scipy ks_2samp) between the forget captions' TR_i and a retain-only model's;
- Model Utility: the harmonic mean of ROUGE, Prob and Truth Ratio of the non-forget tasks (chrF++, also in theirs,
  is left out: it needs the `evaluate` package).
The answer NLL is over the tokens after the prompt in the chat-template rendering "{prompt} {answer} " (the
template's assistant turn), per token.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vkd_jax.benchmarks.clear.prompts import (
    CAPTION_QUESTIONS,
    FACE_PROMPT,
    NAME_QUESTION,
    chat_prompt,
    mc_letter,
    options_block,
)
from vkd_jax.eval import metrics
from vkd_jax.eval.runner import EvalConfig, Query, Runner

SETS = ("forget", "retain", "real_faces", "real_world")
OFFICIAL_TASKS = ("eval_log_forget", "eval_log", "eval_forget_facerec", "eval_retain_facerec", "eval_real_faces",
                  "eval_real_world")


@dataclasses.dataclass(frozen=True)
class ClearEvalConfig:
    base: EvalConfig = EvalConfig()
    reading: str = "followup"          # "followup" | "official"
    official_rows: int = 300           # the official ds_size
    official_max_new_tokens: int = 300
    official_text_only: bool = True    # their generate() gets no image (module docstring)


def _mc_query(rows, r: int, question: str, truth: str, others: list[str], seed: int, tag: str) -> tuple[Query, str]:
    opts = list(others)
    pos = int(np.random.default_rng([seed, r, len(tag)]).integers(len(opts) + 1))
    opts.insert(pos, truth)
    letter = chr(ord("A") + pos)
    ex = {"id": str(r), "person": str(rows[r].get("name") or truth), "row": r, "task": "classification",
          "type": "Image_Textual", "item": 0,
          "question": question, "correct_letter": letter, "ground_truth": truth,
          "options": {chr(ord("A") + i): o for i, o in enumerate(opts)}}
    prompt = chat_prompt(f"{question}\n{options_block(opts)}\n", True)
    return Query(ex, prompt, [(rows, r, None)], None), letter


def _mc_records(runner: Runner, set_name: str, queries: list[Query]) -> list[dict]:
    cfg = runner.cfg
    if cfg.cls_scoring == "likelihood":
        scores = runner.option_scores(queries)
        parsed = [max(s, key=s.get) for s in scores]
        gens = [None] * len(queries)
    else:
        gens = [g for g, _ in runner.generate(queries)]
        scores, parsed = [None] * len(queries), [mc_letter(g) for g in gens]
    return [{"set": set_name, "id": q.ex["id"], "person": q.ex["person"], "task": "name_mc", "form": "VQA", "item": 0,
             "question": q.ex["question"], "pose": None, "prompt": q.prompt, "generation": g,
             "option_scores": s, "reply": g, "parsed": p, "gold": q.ex["correct_letter"],
             "correct": p == q.ex["correct_letter"], "scores": None}
            for q, g, s, p in zip(queries, gens, scores, parsed)]


def _qa_records(runner: Runner, set_name: str, rows, idx: list[int]) -> list[dict]:
    queries = []
    for r in idx:
        row = rows[r]
        ex = {"id": str(r), "row": r, "task": "generation", "type": "Pure_Text", "item": 0,
              "question": row["question"], "ground_truth": row["answer"]}
        queries.append(Query(ex, chat_prompt(row["question"], False), [], None))
    out = []
    for q, (g, _) in zip(queries, runner.generate(queries) if queries else []):
        reply = g.strip()
        out.append({"set": set_name, "id": q.ex["id"], "task": "qa_generation", "form": "QA", "item": 0,
                    "question": q.ex["question"], "pose": None, "prompt": q.prompt, "generation": g,
                    "option_scores": None, "reply": reply, "parsed": reply, "gold": q.ex["ground_truth"],
                    "correct": None, "scores": {**metrics.rouge(reply, q.ex["ground_truth"]),
                                                "bleu": metrics.sentence_bleu(reply, q.ex["ground_truth"])}})
    return out


def followup_records(runner: Runner, sets: dict, seed: int, max_questions: int | None = None) -> dict[str, list]:
    """sets: {"forget": (perturbed rows, tofu rows), "retain": (...), "real_faces": rows, "real_world": rows}."""
    out = {}
    for name, value in sets.items():
        if name in ("forget", "retain"):
            pert, tofu = value
            n = len(pert) if max_questions is None else min(len(pert), max_questions)
            qs = [_mc_query(pert, r, pert[r].get("question") or NAME_QUESTION, pert[r]["name"],
                            pert[r]["perturbed_names"], seed, name)[0] for r in range(n)]
            text = [r for r in range(len(tofu)) if not tofu[r].get("image") and tofu[r].get("question")]
            text = text if max_questions is None else text[:max_questions]
            out[name] = _mc_records(runner, name, qs) + _qa_records(runner, name, tofu, text)
        else:
            rows = value
            n = len(rows) if max_questions is None else min(len(rows), max_questions)
            qs = [_mc_query(rows, r, rows[r].get("question") or NAME_QUESTION, rows[r]["answer"],
                            rows[r]["options"], seed, name)[0] for r in range(n)]
            out[name] = _mc_records(runner, name, qs)
    return out


def followup_values(records: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """{metric: [(cluster, value), ...]}: name MC per rendering, clustered by the person shown; QA scores per
    question, each its own cluster (the text-only rows name no person)."""
    mc = [r for r in records if r["task"] == "name_mc"]
    qa = [r for r in records if r["task"] == "qa_generation"]
    out = {"vqa_acc": [(r.get("person", r.get("id", f"mc{i}")), 100.0 * r["correct"]) for i, r in enumerate(mc)]}
    for m in ("rougeL", "rouge1", "rouge2", "bleu"):
        out[f"qa_{m}"] = [(f"q{r.get('id', i)}", r["scores"][m]) for i, r in enumerate(qa)]
    return out


def followup_metrics(records: list[dict], intervals: bool = False) -> dict[str, float]:
    from vkd_jax.eval.intervals import with_intervals

    values = followup_values(records)
    out = {"vqa_n": len(values["vqa_acc"]), "qa_n": len(values["qa_rougeL"])}
    for metric, pairs in values.items():
        out[metric] = float(np.mean([v for _, v in pairs])) if pairs else math.nan
    if intervals:
        out.update({k: v for k, v in with_intervals(values).items() if k.endswith("_ci95")})
    return out


# ---------------------------------------------------------------------------------------- official metrics

def truth_ratio(para_nll: np.ndarray, perturbed_nll: np.ndarray, forget: bool) -> tuple[float, np.ndarray]:
    """(reported value, TR_i): TR_i = exp(P_i - para_i), P_i = the mean of row i's perturbed per-token NLLs (the
    TOFU code CLEAR's evaluation is built on: `average_perturb_loss.mean(axis=-1)`); rows may differ in count."""
    p_mean = np.asarray([np.mean(np.asarray(x, np.float64)) for x in perturbed_nll])
    tr = np.exp(p_mean - np.asarray(para_nll, np.float64))
    value = np.mean(np.minimum(tr, 1 / tr)) if forget else np.mean(np.maximum(0.0, 1 - 1 / tr))
    return float(value), tr


def prob(true_nll: np.ndarray, perturbed_nll: np.ndarray | None) -> float:
    """Captions (perturbed None): mean exp(-NLL); otherwise mean p / (p + sum of perturbed p)."""
    p = np.exp(-np.asarray(true_nll, np.float64))
    if perturbed_nll is None:
        return float(np.mean(p))
    q = np.asarray([np.exp(-np.asarray(x, np.float64)).sum() for x in perturbed_nll])  # rows may differ in count
    return float(np.mean(p / (p + q)))


def forget_quality(unlearned_tr: np.ndarray, retain_model_tr: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(unlearned_tr), np.asarray(retain_model_tr)).pvalue)


def model_utility(values: list[float]) -> float:
    """Harmonic mean of the non-forget aggregated values (0 if any is 0)."""
    v = np.asarray(values, np.float64)
    return 0.0 if (v <= 0).any() else float(len(v) / np.sum(1.0 / v))


def official_task_rows(task: str, sets: dict) -> tuple[object, str, str, str, bool]:
    """(rows, answer key, paraphrase key, perturbed key, forget?) of one official task."""
    return {"eval_log_forget": (sets["forget"][0], "caption", "paraphrased_caption", "perturbed_captions", True),
            "eval_log": (sets["retain_all"], "caption", "paraphrased_caption", "perturbed_captions", False),
            "eval_forget_facerec": (sets["forget"][0], "name", "name", "perturbed_names", True),
            "eval_retain_facerec": (sets["retain_all"], "name", "name", "perturbed_names", False),
            "eval_real_faces": (sets["real_faces"], "answer", "answer", "options", False),
            "eval_real_world": (sets["real_world"], "answer", "answer", "options", False)}[task]


def official_records(runner: Runner, sets: dict, ccfg: ClearEvalConfig, seed: int) -> dict[str, list]:
    """Per task and row: the prompt, the generation and its ROUGE-L recall, the per-token NLL of the answer, its
    paraphrase and each perturbed answer."""
    out = {}
    for ti, task in enumerate(OFFICIAL_TASKS):
        rows, key, para_key, pert_key, _ = official_task_rows(task, sets)
        n = min(len(rows), ccfg.official_rows)
        recs, queries, gen_queries = [], [], []
        for r in range(n):
            row = rows[r]
            if task in ("eval_log_forget", "eval_log"):
                rng = np.random.default_rng([seed, ti, r])
                question = CAPTION_QUESTIONS[int(rng.integers(len(CAPTION_QUESTIONS)))]
            elif task == "eval_real_world":
                question = row["question"]
            else:
                question = FACE_PROMPT
            prompt = chat_prompt(question, True)
            truth, para = row[key], row[para_key]
            perturbed = list(row[pert_key])
            q = Query({"id": str(r), "row": r, "task": task, "question": question}, prompt, [(rows, r, None)], None)
            queries.append((q, truth, para, perturbed))
            gen_queries.append(Query(q.ex, chat_prompt(question, False), [], None) if ccfg.official_text_only else q)
        answers = [a for _, t, p, ps in queries for a in [t, p, *ps]]
        nll = runner.answer_nll([q for q, t, p, ps in queries for _ in range(2 + len(ps))], answers)
        gens = runner.generate(gen_queries, max_new_tokens=ccfg.official_max_new_tokens) if gen_queries else []
        k = 0
        for (q, truth, _, perturbed), (g, _) in zip(queries, gens):
            m = 2 + len(perturbed)
            vals = nll[k:k + m]
            k += m
            recs.append({"set": task, "id": q.ex["id"], "task": task, "question": q.ex["question"],
                         "prompt": q.prompt, "generation": g, "gold": truth,
                         "rougeL_recall": metrics.rouge_recall(g.strip(), truth), "nll_answer": float(vals[0]),
                         "nll_paraphrase": float(vals[1]), "nll_perturbed": [float(x) for x in vals[2:]]})
        out[task] = recs
    return out


def official_metrics(records: dict[str, list], retain_model_forget_tr: np.ndarray | None = None) -> dict:
    out, utility = {}, []
    for task, recs in records.items():
        if not recs:
            continue
        forget = "forget" in task
        true = np.asarray([r["nll_answer"] for r in recs])
        para = np.asarray([r["nll_paraphrase"] for r in recs])
        pert = [np.asarray(r["nll_perturbed"], np.float64) for r in recs]  # the option count may vary by row
        caption = task in ("eval_log_forget", "eval_log")
        tr_value, tr = truth_ratio(para, pert, forget)
        m = {"rougeL_recall": float(np.mean([r["rougeL_recall"] for r in recs])),
             "prob": prob(true, None if caption else pert), "truth_ratio": tr_value, "n": len(recs)}
        if task == "eval_log_forget":
            m["truth_ratios"] = tr.tolist()
            if retain_model_forget_tr is not None:
                m["forget_quality"] = forget_quality(tr, retain_model_forget_tr)
        out[task] = m
        if not forget:
            utility += [m["rougeL_recall"], m["prob"], m["truth_ratio"]]
    out["model_utility"] = model_utility(utility) if utility else math.nan
    return out
