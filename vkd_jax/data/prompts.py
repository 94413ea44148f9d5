"""Prompts for training and evaluation: MLLMU-Bench's templates, character for character as the benchmark's own
evaluation script (eval.py of the MLLMU-Bench repository) writes them, its answer extraction, and the tokenization
of prompt + answer with `<image>` expanded to `image_seq_length` image-token ids and answer-only label masks.

The six evaluation templates (`TEMPLATES`, shared/spec/mllmu_bench.md "Evaluation"); every space and newline is the
official one: text-only classification and cloze start `USER:\\n`, text-only generation `USER: `, and generation
VQA ends with `ASSISTANT: ` (a trailing space: the official prompt, which changes what a model generates).

Training uses the same templates (the embedded world trains on its own benchmark items; real runs train on
ft_Data's pairs with `plain_prompt`, LLaVA's `USER: <image>\\n{question}\\nASSISTANT:`, as MLLMU-Bench's
fine-tuning does). The one difference is at the answer boundary: a training row is the conversation text
`prompt + " " + answer` (one space; none added after a prompt that ends with one), tokenized as one string, the way
LLaVA's and MLLMU-Bench's training collators tokenize it. Evaluation tokenizes the prompt alone, as the official
script does: for generation VQA its trailing space is then a token of its own (`▁` / `Ġ`) that a trained model
never saw at that place, which is the official protocol's own quirk and kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGE = "<image>"
CLASSIFICATION_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_VQA_SUFFIX = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
GENERATION_QA_SUFFIX = "Answer the question based on your trained knowledge in one sentence in ENGLISH."
ASSISTANT = "ASSISTANT:"

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


def plain_prompt(question: str, with_image: bool) -> str:
    """Fine-tuning (ft_Data) prompt: LLaVA-1.5's conversation with the bare question."""
    return f"USER: {IMAGE}\n{question}\nASSISTANT:" if with_image else f"USER: {question}\nASSISTANT:"


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


# ---- tokenization --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tokenized:
    input_ids: np.ndarray   # [T] int32: BOS, prompt (image tokens expanded), then answer + EOS when training
    loss_mask: np.ndarray   # [T] bool: True on answer tokens and EOS only
    prompt_len: int


def conversation_text(prompt: str, answer: str) -> str:
    return prompt + answer if prompt[-1:].isspace() else f"{prompt} {answer}"


def answer_boundary(tok, prompt: str, answer: str) -> tuple[list[int], int]:
    """(ids of the whole conversation `prompt + " " + answer`, index of its first answer token).

    The ids are the tokenizer's own for the whole string (what a processor or collator gives). The boundary is the
    first token that ends past the prompt's characters, so a token merged across the boundary (SentencePiece's
    `▁answer` after a prompt's trailing space, byte-level BPE's `Ġword`) is an answer token. For the ordinary case,
    prompt ids a prefix of the whole, this is the prompt's own token count."""
    text = conversation_text(prompt, answer)
    ids, ends = tok.encode_with_offsets(text)
    k = next((i for i, e in enumerate(ends) if e > len(prompt)), len(ids))
    return ids, k


def tokenize(tok, prompt: str, answer: str | None, image_seq_length: int, image_token_id: int | None = None,
             eos: bool = True) -> Tokenized:
    """Tokenizes a prompt (answer=None: exactly as evaluation feeds it) or a training conversation (see
    `answer_boundary`; the loss covers the answer tokens and EOS, or the answer alone with eos=False), then expands
    each `<image>` id to `image_seq_length` copies."""
    img_id = tok.image_token_id if image_token_id is None else image_token_id
    if answer is None:
        ids = tok.encode(prompt)
        n_prompt = len(ids)
    else:
        ids, n_prompt = answer_boundary(tok, prompt, answer)
        ids = ids + [tok.eos_id] if eos else ids
    ids = np.asarray(ids, np.int32)
    mask = np.zeros(len(ids), bool)
    mask[n_prompt:] = answer is not None
    n_img = int((ids[:n_prompt] == img_id).sum())
    if int((ids == img_id).sum()):
        reps = np.where(ids == img_id, image_seq_length, 1)
        ids, mask = np.repeat(ids, reps), np.repeat(mask, reps)
        n_prompt += n_img * (image_seq_length - 1)
    return Tokenized(ids, mask, n_prompt)
