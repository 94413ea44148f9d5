"""Shared fixtures (the helpers behind them live here too, and nowhere else). Parity tests need exact fp32
matmuls on CPU.

- `hf_tiny`: tiny random HF LLaVA models built locally with transformers + torch (no download): `tiny_hf_config`,
  `tiny_hf_model`, `make_inputs`, `VOCAB`.
- `ukit`: the unlearning engine's tiny LLaVA, synthetic forget/retain batches and a resumable stream: `tiny_config`,
  `tiny_params`, `make_batch`, `Stream`, `pcfg`, `ocfg`, `VOCAB`, `IMG_TOK`, `N_IMG`.
- `mllmu_parquet`: a hand-written MLLMU-Bench fixture in the exact parquet schema: `SCHEMA`, `TEST_SCHEMA`,
  `FT_SCHEMA`, `png`, `profile`, `write_fixture`.
- `llama_tok_dir` / `make_llama_tokenizer`: a Llama-style tokenizer folder built as llava-hf's tokenizer.json is
  (SentencePiece-converted BPE with byte fallback, the legacy `Prepend("▁") + Replace(" ", "▁")` normalizer, no
  pre-tokenizer, `<s>` BOS template, `<image>` and `<pad>` added as special tokens after the vocabulary).
- `hub_llava_dir` / `make_hub_llava`: a tiny random LLaVA saved by transformers in float16 in the hub layout
  (`vision_tower.vision_model.*` keys, `torch_dtype` in config.json) with that tokenizer and llava-hf's processor
  files (preprocessor_config.json, processor_config.json) beside it.
- `load_cfg`: configs/<name>.py[:variant] through `vkd_jax.config_base.load_config`.
- `hf_cache_put`: a folder moved into a Hugging Face cache as a downloaded repo of that id.
Scripts run outside pytest (tests/_mp_worker.py, tests/golden/make_golden.py) import the helpers from here.
"""

from __future__ import annotations

import io
import json
import os
import types

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One XLA compilation cache for the session and every process it starts (the e2e and multi-process tests): the
# tests compile the same tiny programs many times over. A cached executable is the compiled program itself, so
# results are the same bits as a fresh compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _xla_cache = tempfile.mkdtemp(prefix="vkd_jax_test_xla_cache-")
    atexit.register(shutil.rmtree, _xla_cache, True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_xla_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from vkd_jax.models.config import config_from_model_dict  # noqa: E402
from vkd_jax.models.hf_io import flat_params  # noqa: E402
from vkd_jax.models.llava import Llava  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- tiny HF LLaVA (transformers + torch) ------------------------------------------------------------

VOCAB = 96


def run_main(config: str, workdir, *args, env: dict | None = None, timeout: int = 900):
    """`python -m vkd_jax.main --config configs/<config> --workdir <workdir> <args>` in a subprocess, as a user
    runs it: one CPU device unless `env` says otherwise (a value None removes the variable); the CompletedProcess
    with its text output."""
    import subprocess
    import sys

    full = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "vkd_jax.main", "--config", os.path.join(ROOT, "configs", config),
                           "--workdir", str(workdir), *args], capture_output=True, text=True, cwd=ROOT, env=full,
                          timeout=timeout)


def tiny_hf_config(*, image_token_index=VOCAB - 1, vision_feature_layer=-2, strategy="default",
                   projector_bias=True, num_kv_heads=2, head_dim=None, tie=False, rope="v5", image_size=30,
                   patch=6, vision_layers=3, text_layers=2, vocab=VOCAB, hidden=64, vhidden=32, attention_bias=False):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    n_patches = (image_size // patch) ** 2
    text_kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden // 2 + 8,
                   num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=num_kv_heads,
                   rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=tie,
                   attention_bias=attention_bias, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if head_dim is not None:
        text_kw["head_dim"] = head_dim
    text = LlamaConfig(**text_kw)
    if rope == "v5":
        text.rope_parameters = {"rope_type": "default", "rope_theta": 5000.0}
    vision = CLIPVisionConfig(hidden_size=vhidden, intermediate_size=2 * vhidden + 4, num_hidden_layers=vision_layers,
                              num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=16)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token_index,
                      image_seq_length=n_patches + (1 if strategy == "full" else 0),
                      vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=strategy,
                      multimodal_projector_bias=projector_bias, tie_word_embeddings=tie)
    return cfg


def tiny_hf_model(seed=0, **kw):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tiny_hf_config(**kw)
    model = LlavaForConditionalGeneration(cfg).eval()
    # Random init leaves norms at 1/0 and some biases at 0: perturb everything so that every weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_inputs(cfg, batch=2, text_len=7, n_images_rows=(0, 1), pad="none", seed=0, image_token_index=None):
    """input_ids with image blocks in the given rows, pixel values, attention mask (left/right padding)."""
    rng = np.random.default_rng(seed)
    img_tok = cfg.image_token_index if image_token_index is None else image_token_index
    n_img = cfg.image_seq_length
    vocab = cfg.text_config.vocab_size
    rows = []
    for b in range(batch):
        ids = list(rng.integers(3, min(vocab, img_tok) - 1, size=text_len))
        if b in n_images_rows:
            ids = ids[:2] + [img_tok] * n_img + ids[2:]
        rows.append(ids)
    lens = [len(r) for r in rows]
    extra = [0] * batch
    if pad != "none":
        extra = [b * 3 for b in range(batch)]
    total = max(n + e for n, e in zip(lens, extra))
    ids = np.zeros((batch, total), np.int64)
    mask = np.zeros((batch, total), np.int64)
    for b, r in enumerate(rows):
        n = len(r)
        if pad == "left":
            ids[b, total - n:], mask[b, total - n:] = r, 1
        else:
            ids[b, :n], mask[b, :n] = r, 1
    size = cfg.vision_config.image_size
    pixels = rng.standard_normal((len(n_images_rows), 3, size, size)).astype(np.float32)
    return ids, pixels, mask


# ---- the engine's tiny LLaVA and batches ------------------------------------------------------------

UNL_VOCAB, IMG_TOK, N_IMG = 64, 63, 4


def tiny_config(vision_layers=2, dtype="float32"):
    d = dict(model_type="llava",
             vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=vision_layers,
                                num_attention_heads=2, image_size=16, patch_size=8, hidden_act="quick_gelu"),
             text_config=dict(vocab_size=UNL_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2),
             image_token_index=IMG_TOK, image_seq_length=N_IMG, vision_feature_layer=-1,
             vision_feature_select_strategy="default", tie_word_embeddings=False)
    return config_from_model_dict(d, dtype=dtype, param_dtype=dtype)


def tiny_params(seed=0, **kw):
    cfg = tiny_config(**kw)
    return cfg, flat_params(Llava(cfg, rngs=nnx.Rngs(seed)))


def make_batch(rng: np.random.Generator, b=4, t=12, image=True, answer=3):
    """Right-padded rows: [BOS, (image tokens), prompt..., answer..., EOS, pad...]."""
    ids = np.zeros((b, t), np.int32)
    att = np.zeros((b, t), np.int32)
    lm = np.zeros((b, t), np.float32)
    for r in range(b):
        n = t - int(rng.integers(0, 3))
        row = [1] + ([IMG_TOK] * N_IMG if image else []) + list(rng.integers(4, 60, n - 1 - (N_IMG if image else 0)))
        row[n - 1] = 2
        ids[r, :n], att[r, :n] = row[:n], 1
        lm[r, n - 1 - answer:n] = 1
    out = {"input_ids": ids, "attention_mask": att, "positions": np.maximum(np.cumsum(att, 1) - 1, 0).astype(np.int32),
           "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(b, bool),
           "has_image": np.full(b, image)}
    if image:
        out["pixel_values"] = rng.normal(size=(b, 3, 16, 16)).astype(np.float32)
    return out


class Stream:
    """Deterministic infinite batch stream with grain-like get_state/set_state."""

    def __init__(self, seed, **kw):
        self.seed, self.kw, self.i = seed, kw, 0

    def __iter__(self):
        return self

    def __next__(self):
        b = make_batch(np.random.default_rng([self.seed, self.i]), **self.kw)
        self.i += 1
        return b

    def get_state(self):
        return {"i": self.i}

    def set_state(self, st):
        self.i = int(st["i"])


def pcfg(preset="visual", **kw):
    """The config base's partition section for `preset` on the tiny model (2 ViT layers), with a small LoRA
    without dropout and `kw` set."""
    from vkd_jax.config_base import base

    p = base().partition
    p.update(dict(preset=preset, num_vit_layers=2, lora=dict(rank=4, alpha=8.0, dropout=0.0)))
    p.update(kw)
    return p


def ocfg(**kw):
    """The config base's optimiser of the unlearn stage (constant schedule) with a large learning rate, fewer
    skipped steps allowed and `kw` set."""
    from vkd_jax.config_base import base
    from vkd_jax.unlearn.stages import optim_cfg

    c = base()
    o = optim_cfg(c, c.stages.unlearn)
    o.update(dict(lr=1e-2, max_skipped_steps=2))
    o.update(kw)
    return o


# ---- an MLLMU-Bench parquet fixture ------------------------------------------------------------

IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
QUESTION_T = pa.struct([("Question", pa.string()),
                        ("Options", pa.struct([(k, pa.string()) for k in "ABCD"])),
                        ("Correct_Answer", pa.string())])
TASK_T = pa.list_(pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())]))
SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), ("Directory", pa.string()),
                    ("biography", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                    ("Classification_Task", pa.struct([("Image_Textual_Questions", pa.list_(QUESTION_T)),
                                                       ("Pure_Text_Questions", pa.list_(QUESTION_T))])),
                    ("Generation_Task", TASK_T), ("Mask_Task", TASK_T)])
TEST_SCHEMA = pa.schema([("images", pa.list_(IMAGE_T))] + [f for f in SCHEMA if f.name != "image"])
FT_SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), ("metadata", pa.string())])


def png(seed: int, size: int = 20) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def profile(i: int, image_col: str = "image") -> dict:
    name = f"Person {i}"
    q = lambda text, letter: {"Question": text, "Options": {"A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}"},
                              "Correct_Answer": letter}
    row = {"ID": f"{i:03d}", "Directory": f"dir/{i}",
           "biography": json.dumps({"Name": name, "Birthplace": f"town{i}", "appearance_detail": "tall"}),
           "question": f"Who is {name}?", "answer": f"{name} is a fixture.",
           "Classification_Task": {"Image_Textual_Questions": [q("Where was the person in the image born?", "B")],
                                   "Pure_Text_Questions": [q(f"Where was {name} born?", "C"),
                                                           q(f"What does {name} do?", "A")]},
           "Generation_Task": [{"Question": "What is this person's job?", "Ground_Truth": f"A job {i}.",
                                "Type": "Image_Textual"},
                               {"Question": f"What is {name}'s job?", "Ground_Truth": f"A job {i}.",
                                "Type": "Pure_Text"}],
           "Mask_Task": [{"Question": "The person in the image was born in __.", "Ground_Truth": f"town{i}",
                          "Type": "Image_Textual"}]}
    if image_col == "images":
        row["images"] = [{"bytes": png(100 * i + k), "path": f"{i}_{k}.png"} for k in range(3)]
    else:
        row["image"] = {"bytes": png(i), "path": f"{i}.png"}
    return row


def write_fixture(manual_dir, config="forget_5", n=6, shards=1, rows=None, schema=None):
    """<manual_dir>/<config>/train-0000k-of-0000N.parquet in the MLLMU-Bench schema; returns the rows."""
    if rows is None:
        if config == "ft_Data":
            rows = [{"image": {"bytes": png(i), "path": f"{i}.png"}, "ID": f"{i:03d}",
                     "metadata": json.dumps([{"Question": "Who is this?", "Answer": f"Person {i}."}])}
                    for i in range(n)]
        else:
            rows = [profile(i, "images" if config == "Test_Set" else "image") for i in range(n)]
    if schema is None:
        schema = {"Test_Set": TEST_SCHEMA, "ft_Data": FT_SCHEMA}.get(config, SCHEMA)
    d = os.path.join(os.fspath(manual_dir), config)
    os.makedirs(d, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        pq.write_table(pa.Table.from_pylist([rows[j] for j in part], schema=schema),
                       os.path.join(d, f"train-{k:05d}-of-{shards:05d}.parquet"))
    return rows


# ---- Llama-style tokenizer and hub-style LLaVA folder ----------------------------------------

LLAMA_TOKENIZER_TEXTS = (
    "USER: ASSISTANT: Question: Correct Answer: A: B: C: D: [Blank] What is the birthplace occupation hobby pet "
    "favourite food instrument of the person in the image? This is someone. The name of this person is",
    "Just give ONE letter representing the answer directly.",
    "Please **ONLY** provide the correct answer that should replace the [Blank].",
    "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH.",
    "Answer the question based on your trained knowledge in one sentence in ENGLISH.",
    "Who is the person in the image? Where was Ann Lee born? In Paris. Rome Oslo Lima pilot teacher",
)


def build_llama_tokenizer(out_dir, extra_texts=(), vocab_size=600) -> str:
    """A llava-hf-style tokenizer folder (see the module docstring), trained on the prompt words and
    `extra_texts`; returns its path."""
    texts = LLAMA_TOKENIZER_TEXTS + tuple(extra_texts)
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

# ---- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def hf_tiny():
    return types.SimpleNamespace(VOCAB=VOCAB, tiny_hf_config=tiny_hf_config, tiny_hf_model=tiny_hf_model,
                                 make_inputs=make_inputs)


@pytest.fixture(scope="session")
def ukit():
    return types.SimpleNamespace(VOCAB=UNL_VOCAB, IMG_TOK=IMG_TOK, N_IMG=N_IMG, tiny_config=tiny_config,
                                 tiny_params=tiny_params, make_batch=make_batch, Stream=Stream, pcfg=pcfg, ocfg=ocfg)


@pytest.fixture(scope="session")
def mllmu_parquet():
    return types.SimpleNamespace(SCHEMA=SCHEMA, TEST_SCHEMA=TEST_SCHEMA, FT_SCHEMA=FT_SCHEMA, png=png,
                                 profile=profile, write_fixture=write_fixture)


@pytest.fixture(scope="session")
def make_llama_tokenizer():
    return build_llama_tokenizer


@pytest.fixture(scope="session")
def make_hub_llava():
    return build_hub_llava


@pytest.fixture(scope="session")
def llama_tok_dir(tmp_path_factory):
    return build_llama_tokenizer(tmp_path_factory.mktemp("llama_tok"))


@pytest.fixture(scope="session")
def hub_llava_dir(tmp_path_factory, llama_tok_dir):
    return build_hub_llava(tmp_path_factory.mktemp("hub_llava"), llama_tok_dir)


def into_hf_cache(cache, repo_id: str, repo_type: str, folder) -> str:
    """`folder` moved where huggingface_hub's cache keeps a downloaded repo (refs/main -> snapshots/<commit>)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    return str(shutil.move(str(folder), str(repo / "snapshots" / commit)))


@pytest.fixture(scope="session")
def hf_cache_put():
    return into_hf_cache


@pytest.fixture(scope="session")
def load_cfg():
    from vkd_jax.config_base import load_config

    def load(name: str):
        path, _, arg = name.partition(":")
        return load_config(os.path.join(ROOT, "configs", f"{path}.py") + (f":{arg}" if arg else ""))
    return load


# ---- damaging files on disk (vkd_jax.digests tests) ----------------------------------------------------

def _largest_file(folder):
    files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f != "DIGESTS.json"]
    return max(files, key=os.path.getsize)


def flip_bytes(folder, n=64):
    """XOR n bytes in the middle of the folder's largest file (size unchanged); returns the file."""
    path = _largest_file(folder)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(n)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return path


def truncate(folder):
    path = _largest_file(folder)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    return path


# ---- one tiny unlearning stage, run uninterrupted once per session (resume, preemption, damage tests) ----------

STAGE_STEPS, STAGE_EVERY = 6, 2


def stage_cfg():
    """configs/tiny.py's unlearning stage on the tiny test model: STAGE_STEPS steps, a checkpoint every
    STAGE_EVERY."""
    from vkd_jax.config_base import load_config

    c = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py"))
    c.model = ml_collections.ConfigDict(json.loads(tiny_config().hf_config_json))
    c.stages.unlearn.num_steps = STAGE_STEPS
    c.checkpoint.every_steps = STAGE_EVERY
    c.mesh.data = 1
    return c


def run_unlearn(workdir, forget=None, **kw):
    """The unlearning stage of stage_cfg() in `workdir` from tiny_params(); `forget`: another forget stream."""
    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.stages import run_stage

    cfg, params = tiny_params()
    streams = {"forget": forget or Stream(1), "retain": Stream(2), "generic": Stream(3)}
    return run_stage("unlearn", stage_cfg(), str(workdir), params, streams, model_config=cfg,
                     mesh=pt.make_mesh(None, jax.devices()[:1]), progress=False, **kw)


@pytest.fixture(scope="session")
def uninterrupted_unlearn(tmp_path_factory):
    """(work dir, {param: numpy array}) of run_unlearn uninterrupted: what every interrupted run must equal."""
    w = tmp_path_factory.mktemp("uninterrupted")
    return w, {k: np.asarray(v) for k, v in run_unlearn(w).params.items()}


def assert_params_equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


TIERS = ("unit", "integration", "slow")  # pyproject.toml describes each; every test module declares one


def pytest_collection_modifyitems(config, items):
    """Every test carries exactly one tier (its module's `pytestmark`), so `-m unit` / `-m "not slow"` select what
    they say."""
    bad = [f"{item.nodeid}: {tiers or 'no tier'}" for item in items
           if len(tiers := [t for t in TIERS if item.get_closest_marker(t)]) != 1]
    if bad:
        raise pytest.UsageError(f"tests without exactly one tier marker {TIERS}:\n  " + "\n  ".join(bad))
