"""CLEAR's prompts: LLaVA-1.5's chat template around each question (the follow-up work's evaluation prompt, also
used to train the embedded CLEAR), the official code's caption questions and face-recognition prompt, the
multiple-choice options and their parse, and the training rows as examples (`clear_examples`; the adapter's
docstring lists the tasks).
"""

from __future__ import annotations

import re
import zlib

NAME_QUESTION = "What is the name of the person in the image?"
FACE_PROMPT = "The name of the person on the image is "
CAPTION_QUESTIONS = ("What can you see in this picture?", "Tell me about the content of this image",
                     "Can you give a description of the image?", "What is depicted in the image?",
                     "Explain what you observe in the picture.", "Describe the image in detail.",
                     "What is the main subject of this image?", "Can you describe the scene or objects in the image?",
                     "What is happening in this image?")
def chat_prompt(text: str, with_image: bool) -> str:
    """LLaVA-1.5's chat template (llava-hf) for one user turn and the generation prompt."""
    return "USER: " + ("<image>\n" if with_image else "") + text + " " + "ASSISTANT:"


def options_block(options: list[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {v}" for i, v in enumerate(options))


def mc_letter(reply: str) -> str:
    """MMUnlearner's parse: strip every non-alphanumeric character, the first one upper-cased."""
    s = re.sub(r"[^a-zA-Z0-9]", "", reply)
    return s[0].upper() if s else ""


TRAIN_TASKS = ("caption", "recognition", "name_mc", "qa")


def name_mc_prompt(question: str, options: dict) -> str:
    return chat_prompt(f"{question}\n{options_block([options[k] for k in sorted(options)])}\n", True)


def clear_examples(rec: dict, tasks, types, cls_answer: str = "letter") -> list[dict]:
    """One CLEAR row -> its training examples (the module docstring)."""
    out = []
    image = bool((rec.get("image") or {}).get("bytes"))
    typ = "Image_Textual" if image else "Pure_Text"
    if typ not in types:
        return out
    rid = str(rec.get("name") or rec.get("answer") or rec.get("question") or "")

    def add(task, item, question, prompt, answer, **kw):
        out.append({"id": rid, "task": task, "type": typ, "item": item, "question": question, "prompt": prompt,
                    "answer": answer, "correct_letter": kw.pop("letter", ""), "ground_truth": answer, **kw})
    if not image:
        if "qa" in tasks and rec.get("question"):
            add("qa", 0, rec["question"], chat_prompt(rec["question"], False), rec["answer"])
        return out
    if "caption" in tasks and rec.get("caption"):
        q = CAPTION_QUESTIONS[zlib.crc32(rec["caption"].encode()) % len(CAPTION_QUESTIONS)]
        add("caption", 0, q, chat_prompt(q, True), rec["caption"])
    question = rec.get("question") or NAME_QUESTION
    truth = rec.get("name") or rec.get("answer")
    if truth and "recognition" in tasks:
        add("recognition", 1, question, chat_prompt(question, True), truth)
    if truth and "name_mc" in tasks:  # options resampled by the pipeline from the stream's own names
        opts = {"A": truth, **{chr(ord("B") + i): o for i, o in enumerate(rec.get("options") or [])}}
        add("name_mc", 2, question, name_mc_prompt(question, opts), truth if cls_answer == "option" else "A",
            letter="A", options=opts, mc_prompt=name_mc_prompt)
    return out
