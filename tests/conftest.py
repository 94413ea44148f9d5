"""Shared fixtures. Parity tests need exact fp32 matmuls on CPU.

- `llama_tok_dir`: a Llama-style tokenizer folder built as llava-hf's tokenizer.json is (SentencePiece-converted
  BPE with byte fallback, the legacy `Prepend("▁") + Replace(" ", "▁")` normalizer, no pre-tokenizer, `<s>` BOS
  template, `<image>` and `<pad>` added as special tokens after the vocabulary), trained locally.
- `hub_llava_dir`: a tiny random LLaVA saved by transformers in float16 in the hub layout
  (`vision_tower.vision_model.*` keys, `torch_dtype` in config.json) with that tokenizer and llava-hf's processor
  files (preprocessor_config.json, processor_config.json) beside it.
"""

import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

LLAMA_TOKENIZER_TEXTS = (
    "USER: ASSISTANT: Question: Correct Answer: A: B: C: D: [Blank] What is the birthplace occupation hobby pet "
    "favourite food instrument of the person in the image? This is someone. The name of this person is",
    "Just give ONE letter representing the answer directly.",
    "Please **ONLY** provide the correct answer that should replace the [Blank].",
    "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH.",
    "Answer the question based on your trained knowledge in one sentence in ENGLISH.",
    "Who is the person in the image? Where was Ann Lee born? In Paris. Rome Oslo Lima pilot teacher",
)


def build_llama_tokenizer(out_dir, texts=LLAMA_TOKENIZER_TEXTS, vocab_size=600) -> str:
    """A llava-hf-style tokenizer folder (see the module docstring); returns its path."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    os.makedirs(out_dir, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # learn word-start pieces ("▁The") as SentencePiece does: split at "▁" for training only
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(list(texts) * 3, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                 show_progress=False))
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken("<image>", normalized=False, special=True),
                            AddedToken("<pad>", normalized=False, special=True)])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "legacy": True, "clean_up_tokenization_spaces": False, "model_max_length": 4096,
                   "padding_side": "left", **special}, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)
    return str(out_dir)


def build_hub_llava(out_dir, tok_dir, *, image_size=32, patch=8, seed=0, mixed_dtypes=False) -> str:
    """A tiny random LLaVA in float16 (with mixed_dtypes: its norms in float32) as llava-hf ships LLaVA-1.5."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from hf_tiny import tiny_hf_model

    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = len(tok)
    model = tiny_hf_model(seed=seed, vocab=vocab, image_token_index=tok.convert_tokens_to_ids("<image>"),
                          image_size=image_size, patch=patch, vision_feature_layer=-1)
    model.config.text_config.pad_token_id = tok.convert_tokens_to_ids("<pad>")
    model = model.half()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    path = os.path.join(out_dir, "model.safetensors")
    sd = load_file(path)
    hub = {}
    for k, v in sd.items():  # transformers 5 writes vision_tower.*; the hub files have vision_tower.vision_model.*
        k = "vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k
        if mixed_dtypes and ("norm" in k or "layrnorm" in k):
            v = v.float()
        hub[k] = v.contiguous()
    save_file(hub, path, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(out_dir, "config.json")))
    cfg["torch_dtype"] = "float16"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(out_dir, name))
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True,
                   "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "image_mean": mean, "image_processor_type": "CLIPImageProcessor", "image_std": std,
                   "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
                   "size": {"shortest_edge": image_size}}, f, indent=2)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": patch,
                   "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}, f, indent=2)
    return str(out_dir)


@pytest.fixture(scope="session")
def llama_tok_dir(tmp_path_factory):
    return build_llama_tokenizer(tmp_path_factory.mktemp("llama_tok"))


@pytest.fixture(scope="session")
def hub_llava_dir(tmp_path_factory, llama_tok_dir):
    return build_hub_llava(tmp_path_factory.mktemp("hub_llava"), llama_tok_dir)
