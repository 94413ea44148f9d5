"""MLLMU-Bench's prompts: its templates, character for character as the benchmark's own evaluation script
(eval.py of the MLLMU-Bench repository) writes them, its few-shot demonstrations and its answer extraction.

The six evaluation templates (`TEMPLATES`, shared/spec/mllmu_bench.md "Evaluation"); every space and newline is the
official one: text-only classification and cloze start `USER:\\n`, text-only generation `USER: `, and generation
VQA ends with `ASSISTANT: ` (a trailing space: the official prompt, which changes what a model generates).

Training uses the same templates (the embedded world trains on its own benchmark items; real runs train on
ft_Data's pairs with `plain_prompt`, LLaVA's conversation, as MLLMU-Bench's fine-tuning does); how a prompt and
its answer are tokenized is LLaVA's, not the benchmark's (vkd_jax.data.chat).
"""

from __future__ import annotations

import json

from vkd_jax.data.chat import ASSISTANT
from vkd_jax.data.pipeline import as_str
from vkd_jax.data.sources import pair_examples

TASKS = ("ft", "classification", "generation", "cloze")  # what `profile_examples` makes

CLASSIFICATION_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_VQA_SUFFIX = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
GENERATION_QA_SUFFIX = "Answer the question based on your trained knowledge in one sentence in ENGLISH."

# what the embedded worlds' tokenizers learn besides their own text, so that template words are single tokens
TOKENIZER_TEXTS = (CLASSIFICATION_SUFFIX, CLOZE_SUFFIX, GENERATION_VQA_SUFFIX, GENERATION_QA_SUFFIX,
                   "USER: ASSISTANT: A: B: C: D: [Blank]")

# (task, form) -> the official prompt; {body} is the question block (see the builders below)
TEMPLATES = {
    ("classification", "VQA"): "USER: <image>\n{body}\n" + CLASSIFICATION_SUFFIX + "\nASSISTANT:",
    ("classification", "QA"): "USER:\n{body}\n" + CLASSIFICATION_SUFFIX + "\nASSISTANT:",
    ("cloze", "VQA"): "USER: <image>\n{body}\nASSISTANT:",
    ("cloze", "QA"): "USER:\n{body}\nASSISTANT:",
    ("generation", "VQA"): "USER: <image>\n{body}\n" + GENERATION_VQA_SUFFIX + "\nASSISTANT: ",
    ("generation", "QA"): "USER: {body}\n" + GENERATION_QA_SUFFIX + "\nASSISTANT:",
}


def form(with_image: bool) -> str:
    return "VQA" if with_image else "QA"


def options_block(question: str, options: dict) -> str:
    """`{Question}\\nA: {A}\\nB: {B}\\nC: {C}\\nD: {D}` (the official formulate_prompt_with_options)."""
    return question + "\n" + "\n".join(f"{k}: {options[k]}" for k in "ABCD")


def cloze_block(question: str) -> str:
    return question.replace("__", "[Blank]") + "\n" + CLOZE_SUFFIX


def classification_prompt(question: str, options: dict, with_image: bool) -> str:
    return TEMPLATES["classification", form(with_image)].format(body=options_block(question, options))


def cloze_prompt(question: str, with_image: bool) -> str:
    return TEMPLATES["cloze", form(with_image)].format(body=cloze_block(question))


def generation_prompt(question: str, with_image: bool) -> str:
    return TEMPLATES["generation", form(with_image)].format(body=question)


# multiple-choice prompts with fresh options (the input pipeline's resample_options), by form
_MC_PROMPT = {"Image_Textual": lambda q, options: classification_prompt(q, options, True),
              "Pure_Text": lambda q, options: classification_prompt(q, options, False)}


def profile_examples(rec: dict, tasks, types, cls_answer: str = "letter") -> list[dict]:
    """One stored profile -> its examples (prompt text, answer, metadata) for the selected tasks (`TASKS`) and
    types; classification answers are the correct letter, or the correct option's text with cls_answer="option"."""
    if set(tasks) - set(TASKS):
        raise ValueError(f"unknown MLLMU-Bench tasks {sorted(set(tasks) - set(TASKS))}; tasks {TASKS}")
    pid = as_str(rec["ID"])

    def add(task, typ, item, question, prompt, answer, letter="", gt=""):
        if typ in types:
            out.append({"id": pid, "task": task, "type": typ, "item": item, "question": question,
                        "prompt": prompt, "answer": answer, "correct_letter": letter, "ground_truth": gt})
    out = pair_examples(rec, tasks, types)
    if "classification" in tasks:
        ct = json.loads(as_str(rec["Classification_Task"])) or {}
        for key, typ in (("Image_Textual_Questions", "Image_Textual"), ("Pure_Text_Questions", "Pure_Text")):
            for i, q in enumerate(ct.get(key) or []):
                add("classification", typ, i, q["Question"],
                    classification_prompt(q["Question"], q["Options"], typ == "Image_Textual"),
                    str(q["Options"][q["Correct_Answer"]]) if cls_answer == "option" else q["Correct_Answer"],
                    letter=q["Correct_Answer"], gt=q["Options"][q["Correct_Answer"]])
                if typ in types:
                    out[-1]["options"] = {k: str(v) for k, v in q["Options"].items()}
                    out[-1]["mc_prompt"] = _MC_PROMPT[typ]
    for task, col, make in (("generation", "Generation_Task", generation_prompt),
                            ("cloze", "Mask_Task", cloze_prompt)):
        if task in tasks:
            for i, q in enumerate(json.loads(as_str(rec[col])) or []):
                add(task, q["Type"], i, q["Question"], make(q["Question"], q["Type"] == "Image_Textual"),
                    q["Ground_Truth"], gt=q["Ground_Truth"])
    return out


# ---- few-shot demonstrations, as the official script formats them (it has no few-shot generation) ----------------

def classification_demo(question: str, options: dict, letter: str, with_image: bool) -> str:
    head = "USER: <image>\n" if with_image else "USER:\n"
    return head + "Question: " + options_block(question, options) + f"\nCorrect Answer: {letter}\n"


def cloze_demo(question: str, answer: str, with_image: bool) -> str:
    head = "USER:<image>\n" if with_image else "USER:\n"  # no space after USER: in the official image demo
    return head + cloze_block(question) + f"\nCorrect Answer: {answer}\n"


# ---- answers: what the official script takes from a generation ---------------------------------------------------

def official_answer(decoded: str, task: str) -> str:
    """The reply as eval.py takes it from the decoded sequence (prompt and generation, special tokens skipped):
    the text after the first `ASSISTANT:` (up to a second one), stripped; for cloze and generation, failing that,
    the text after `Answer:`; else the whole text stripped."""
    if ASSISTANT in decoded:
        return decoded.split(ASSISTANT)[1].strip()
    if task != "classification" and "Answer:" in decoded:
        return decoded.split("Answer:")[1].strip()
    return decoded.strip()


def classification_prediction(reply: str, rule: str = "official") -> str:
    """The predicted letter ('' if none). "official": the first character of the stripped reply, upper-cased,
    counts only if it is one of A-D (a reply starting with "(" is wrong); "lenient": the first alphanumeric
    character, upper-cased (then "(b) Rome" reads as B)."""
    if rule == "official":
        s = reply.strip()
        return s[0].upper() if s and s[0].upper() in "ABCD" else ""
    if rule == "lenient":
        for ch in reply:
            if ch.isalnum():
                return ch.upper()
        return ""
    raise ValueError(f"classification parse rule {rule!r}: use 'official' or 'lenient'")


def cloze_correct(generated: str, ground_truth: str) -> bool:
    return ground_truth.lower() in generated.lower()
