"""LLaVA-1.5's conversation and its tokenization: `<image>` expanded to `image_seq_length` image-token ids,
answer-only label masks. What every benchmark's prompts are tokenized with (vkd_jax.benchmarks.<name>.prompts
write the prompt strings).

A training row is the conversation text `prompt + " " + answer` (one space; none added after a prompt that ends
with one), tokenized as one string, the way LLaVA's and MLLMU-Bench's training collators tokenize it. Evaluation
tokenizes the prompt alone, as the benchmarks' own scripts do: for a prompt that ends with a space (MLLMU-Bench's
generation VQA) that space is then a token of its own (`▁` / `Ġ`) that a trained model never saw at that place,
which is the official protocol's own quirk and kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGE = "<image>"
ASSISTANT = "ASSISTANT:"


def plain_prompt(question: str, with_image: bool) -> str:
    """Fine-tuning (ft_Data) prompt: LLaVA-1.5's conversation with the bare question."""
    return f"USER: {IMAGE}\n{question}\nASSISTANT:" if with_image else f"USER: {question}\nASSISTANT:"


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
