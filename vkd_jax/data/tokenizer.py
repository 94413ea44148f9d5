"""Tokenizers through the `tokenizers` library only (no transformers at run time).

- `train_tokenizer(texts, out_dir)`: the embedded world's byte-level BPE, trained on the benchmark's text and saved
  in HF format (tokenizer.json, tokenizer_config.json, special_tokens_map.json) with `<unk> <s> </s> <pad> <image>`;
  `AutoTokenizer.from_pretrained(out_dir)` loads it. Byte-level, so every string round-trips (newlines included).
- `load_tokenizer(folder)`: that folder or a real HF LLaVA folder's tokenizer.json -> `TextTokenizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vkd_jax.errors import CheckpointError

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
IMAGE_TOKEN = "<image>"


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special ids prompts need. `encode` adds BOS as the folder's
    post-processor says (LLaVA: `<s>` first), never EOS."""

    def __init__(self, tok: Tokenizer, special: dict[str, str], image_token: str = IMAGE_TOKEN, source: str = ""):
        self.tok, self.source = tok, source
        self.tok.no_padding()
        self.tok.no_truncation()

        def tid(name, required=True):
            t = special.get(name)
            i = self.tok.token_to_id(t) if t else None
            if i is None and required:
                raise CheckpointError(f"{source}: special token {name}={t!r} is not in the vocabulary")
            return i
        self.bos_id, self.eos_id, self.unk_id = tid("bos_token"), tid("eos_token"), tid("unk_token", False)
        pad = tid("pad_token", False)
        self.pad_id = pad if pad is not None else (self.unk_id if self.unk_id is not None else 0)
        self.image_token = image_token
        self.image_token_id = self.tok.token_to_id(image_token)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=True).ids
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        return [self.bos_id] + ids if add_bos else ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """encode(text) and, per token, the end of its character span in `text` (0 for BOS)."""
        enc = self.tok.encode(text, add_special_tokens=True)
        ids, ends = list(enc.ids), [e for _, e in enc.offsets]
        if ids and ids[0] == self.bos_id:
            ids, ends = ids[1:], ends[1:]
        return [self.bos_id] + ids, [0] + ends

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
        return [self.encode(t, add_bos) for t in texts]  # per text: keeps the BOS rule in one place

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """As transformers' decode for a BPE tokenizer (Llama's, ours): the tokenizers decoder alone (transformers 5
        never applies clean_up_tokenization_spaces to BPE tokenizers; llava-hf's config sets it False anyway)."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _special_from_files(folder: str) -> dict[str, str]:
    special = dict(SPECIAL_TOKENS)
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        for k in SPECIAL_TOKENS:
            v = d.get(k)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                special[k] = v
    return special


def load_tokenizer(folder: str | os.PathLike, image_token: str = IMAGE_TOKEN) -> TextTokenizer:
    """tokenizer.json (+ special token files) of an HF folder (real LLaVA or the embedded world's)."""
    folder = os.fspath(folder)
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found (a LLaVA HF folder or the embedded tokenizer dir is needed)")
    tok = TextTokenizer(Tokenizer.from_file(path), _special_from_files(folder), image_token, path)
    if tok.image_token_id is None:
        raise CheckpointError(f"{path}: image token {image_token!r} is not in the vocabulary")
    return tok


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4096) -> TextTokenizer:
    """Byte-level BPE on `texts` (the benchmark's text and its prompts' words, so that template words are single
    tokens); every word of a small benchmark becomes one token well below `vocab_size`."""
    specials = [SPECIAL_TOKENS[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")] + [IMAGE_TOKEN]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, "padding_side": "right",
           "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
           "extra_special_tokens": [IMAGE_TOKEN], **SPECIAL_TOKENS}
    for fname, d in (("tokenizer_config.json", cfg),
                     ("special_tokens_map.json", {**SPECIAL_TOKENS, "additional_special_tokens": [IMAGE_TOKEN]})):
        with open(os.path.join(out_dir, fname), "w") as f:
            json.dump(d, f, indent=1)
    return load_tokenizer(out_dir)
