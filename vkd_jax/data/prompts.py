"""Prompts for training and evaluation alike: LLaVA-1.5 conversation format and MLLMU-Bench's templates
(character for character as in the benchmark's evaluation code), and their tokenization with `<image>` expanded
to `image_seq_length` image-token ids and answer-only label masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGE = "<image>"
CLASSIFICATION_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_VQA_SUFFIX = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
GENERATION_QA_SUFFIX = "Answer the question based on your trained knowledge in one sentence in ENGLISH."


def conversation(user_text: str, with_image: bool) -> str:
    """`USER: <image>\\n{text}\\nASSISTANT:` (without `<image>\\n` for text-only prompts)."""
    return f"USER: {IMAGE}\n{user_text}\nASSISTANT:" if with_image else f"USER: {user_text}\nASSISTANT:"


def classification_prompt(question: str, options: dict, with_image: bool) -> str:
    opts = "\n".join(f"{k}: {options[k]}" for k in "ABCD")
    return conversation(f"{question}\n{opts}\n{CLASSIFICATION_SUFFIX}", with_image)


def cloze_prompt(question: str, with_image: bool) -> str:
    return conversation(f"{question.replace('__', '[Blank]')}\n{CLOZE_SUFFIX}", with_image)


def generation_prompt(question: str, with_image: bool) -> str:
    return conversation(f"{question}\n{GENERATION_VQA_SUFFIX if with_image else GENERATION_QA_SUFFIX}", with_image)


def plain_prompt(question: str, with_image: bool) -> str:
    """Fine-tuning (ft_Data) prompt: the bare question in the conversation format."""
    return conversation(question, with_image)


def classification_prediction(generated: str) -> str:
    """First alphanumeric character, upper-cased ('' if none): the benchmark's letter extraction."""
    for ch in generated:
        if ch.isalnum():
            return ch.upper()
    return ""


def cloze_correct(generated: str, ground_truth: str) -> bool:
    return ground_truth.lower() in generated.lower()


@dataclasses.dataclass
class Tokenized:
    input_ids: np.ndarray   # [T] int32: BOS, prompt (image tokens expanded), then answer + EOS when training
    loss_mask: np.ndarray   # [T] bool: True on answer tokens and EOS only
    prompt_len: int


def tokenize(tok, prompt: str, answer: str | None, image_seq_length: int, image_token_id: int | None = None
             ) -> Tokenized:
    """Tokenizes the whole conversation as LLaVA does (one string, `<image>` an added token), then expands each
    `<image>` id to `image_seq_length` copies. With an answer: `prompt + " " + answer` and EOS, where the loss
    covers the answer tokens and EOS (the prompt boundary is the prompt's own token count, as LLaVA's code)."""
    img_id = tok.image_token_id if image_token_id is None else image_token_id
    p_ids = tok.encode(prompt)
    if answer is None:
        ids, n_prompt = p_ids, len(p_ids)
    else:
        full = tok.encode(f"{prompt} {answer}")
        n_prompt = len(p_ids)
        if full[:n_prompt] != p_ids:  # merged across the boundary: keep prompt tokens exact, re-encode the answer
            full = p_ids + tok.encode(" " + answer, add_bos=False)
        ids = full + [tok.eos_id]
    ids = np.asarray(ids, np.int32)
    mask = np.zeros(len(ids), bool)
    mask[n_prompt:] = answer is not None
    n_img = int((ids == img_id).sum())
    if n_img:
        reps = np.where(ids == img_id, image_seq_length, 1)
        ids, mask = np.repeat(ids, reps), np.repeat(mask, reps)
        n_prompt += n_img * (image_seq_length - 1)
    return Tokenized(ids, mask, n_prompt)
