"""HF -> ours -> HF round trips (bitwise), key layouts, sharding, dtypes, the CLIs and their errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vkd_jax

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _write_layout(hf, folder, layout):
    """Save `hf` with one of the three key layouts found in the wild."""
    hf.save_pretrained(folder)  # transformers 5: vision_tower.* (no vision_model.)
    if layout == "v5":
        return folder
    path = os.path.join(folder, "model.safetensors")
    sd = load_file(path)
    if layout == "hub":
        sd = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
              for k, v in sd.items()}
    elif layout == "memory":
        sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt"})
    return folder


def _from_pretrained(folder, dtype):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=TORCH_DTYPES[dtype]).eval()


def _assert_state_dicts_bitwise_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("layout", ["v5", "hub", "memory"])
def test_round_trip_is_bitwise_and_reloads_in_transformers(tmp_path, layout, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    src = _write_layout(hf, tmp_path / "src", layout)
    model = vkd_jax.load_hf(src)
    out = vkd_jax.save_hf(model, tmp_path / "out")
    back = _from_pretrained(out, "float32")
    _assert_state_dicts_bitwise_equal(hf, back)
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(0, 1))
    with torch.no_grad():
        l1 = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px), attention_mask=torch.tensor(mask)).logits
        l2 = back(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px), attention_mask=torch.tensor(mask)).logits
    assert torch.equal(l1, l2)
    # Written in the hub layout, which both transformers 4 and 5 read.
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        header = f.read(8 + int.from_bytes(f.read(8), "little"))
    assert b"vision_tower.vision_model.encoder.layers.0" in header


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_round_trip_is_bitwise(tmp_path, dtype, hf_tiny):
    hf = hf_tiny.tiny_hf_model().to(TORCH_DTYPES[dtype])
    hf.save_pretrained(tmp_path / "src")
    model = vkd_jax.load_hf(tmp_path / "src", dtype=dtype)
    assert model.config.param_dtype == dtype
    out = vkd_jax.save_hf(model, tmp_path / "out")
    _assert_state_dicts_bitwise_equal(hf, _from_pretrained(out, dtype))


def _safetensors_dict(folder):
    from safetensors.numpy import load_file as load_np

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_np(os.path.join(folder, f)))
    return out


@pytest.mark.parametrize("mixed", [False, True])
def test_hub_fp16_folder_is_kept_as_stored_bitwise(tmp_path, llama_tok_dir, make_hub_llava, mixed):
    """A llava-hf-style fp16 folder (with `mixed`: its norms in fp32) loads with every tensor in the dtype the file
    stores it in, through orbax and back to HF, with every tensor bitwise the input's, dtype included."""

    from vkd_jax.models.orbax_io import load_model_orbax, save_model_orbax

    src = make_hub_llava(tmp_path / "src", llama_tok_dir, mixed_dtypes=mixed)
    model = vkd_jax.load_hf(src, dtype="bfloat16")  # compute in bf16: storage stays as the file has it
    c = model.config
    assert c.param_dtype == "float16" and c.dtype == "bfloat16"
    assert bool(c.param_dtype_overrides) == mixed and all(d == "float32" for _, d in c.param_dtype_overrides)
    params = vkd_jax.models.hf_io.flat_params(model)
    for path, v in params.items():
        assert str(v.dtype) == c.storage_dtype(path), path
    ckpt = save_model_orbax(model, tmp_path / "ckpt")
    again = load_model_orbax(ckpt)
    assert again.config.param_dtype_overrides == c.param_dtype_overrides
    out = vkd_jax.save_hf(again, tmp_path / "out", template_hf_dir=src)
    a, b = _safetensors_dict(src), _safetensors_dict(out)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float16"
    # an explicit dtype casts everything, on load and on export
    bf = vkd_jax.load_hf(src, dtype="bfloat16", param_dtype="bfloat16")
    assert {str(v.dtype) for v in vkd_jax.models.hf_io.flat_params(bf).values()} == {"bfloat16"}
    out32 = vkd_jax.save_hf(model, tmp_path / "out32", dtype="float32")
    assert {v.dtype.name for v in _safetensors_dict(out32).values()} == {"float32"}
    assert json.loads((tmp_path / "out32" / "config.json").read_text())["torch_dtype"] == "float32"


def test_export_is_opened_by_autoprocessor(tmp_path, hf_tiny):
    """Without processor files in the template, save_hf writes llava-hf's (preprocessor_config.json at the model's
    image size, processor_config.json, generation_config.json): AutoProcessor and GenerationConfig load them."""
    from transformers import AutoProcessor, GenerationConfig

    from vkd_jax.data.tokenizer import train_tokenizer

    tok_dir = tmp_path / "tok"
    train_tokenizer(["Who is the person in the image?", "This is Ann Lee."] * 3, tok_dir)
    hf = hf_tiny.tiny_hf_model(vocab=96, image_size=30, patch=6)
    hf.save_pretrained(tmp_path / "src")
    out = vkd_jax.save_hf(vkd_jax.load_hf(tmp_path / "src"), tmp_path / "out", template_hf_dir=tok_dir)
    for name in ("preprocessor_config.json", "processor_config.json", "generation_config.json", "tokenizer.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    proc = AutoProcessor.from_pretrained(out)
    assert type(proc).__name__ == "LlavaProcessor" and proc.patch_size == 6
    from PIL import Image
    px = proc(images=Image.fromarray(np.zeros((40, 50, 3), np.uint8)), text="USER: <image>\nhi")["pixel_values"]
    assert tuple(np.asarray(px).shape) == (1, 3, 30, 30)
    g = GenerationConfig.from_pretrained(out)
    assert (g.bos_token_id, g.eos_token_id) == (1, 2)


def test_tied_embeddings_round_trip(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model(tie=True, projector_bias=False)
    hf.save_pretrained(tmp_path / "src")
    model = vkd_jax.load_hf(tmp_path / "src")
    assert not hasattr(model, "lm_head")
    back = _from_pretrained(vkd_jax.save_hf(model, tmp_path / "out"), "float32")
    _assert_state_dicts_bitwise_equal(hf, back)


def test_sharded_in_and_out(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    hf.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert os.path.isfile(tmp_path / "src" / "model.safetensors.index.json")
    model = vkd_jax.load_hf(tmp_path / "src")
    out = vkd_jax.save_hf(model, tmp_path / "out", max_shard_bytes=40_000)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    total = sum(int(np.prod(v.shape)) * 4 for v in hf.state_dict().values())
    assert index["metadata"]["total_size"] == total
    _assert_state_dicts_bitwise_equal(hf, _from_pretrained(out, "float32"))


def test_save_refuses_to_clobber_and_leaves_nothing_half_written(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    hf.save_pretrained(tmp_path / "src")
    model = vkd_jax.load_hf(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        vkd_jax.save_hf(model, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temp folders left behind


# ---- CLIs ---------------------------------------------------------------------------------------------

def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "conversion", script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_round_trip_with_template(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    src = tmp_path / "src"
    hf.save_pretrained(src)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (src / "preprocessor_config.json").write_text('{"crop_size": {"height": 30, "width": 30}}')
    r = _cli("hf_to_orbax.py", "--hf_dir", src, "--out", tmp_path / "ckpt")
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "ckpt" / "model_config.json")
    r = _cli("orbax_to_hf.py", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "out", "--template_hf_dir", src,
             "--max_shard_size", "50KB")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    assert (out / "preprocessor_config.json").exists()
    assert (out / "model.safetensors.index.json").exists()
    _assert_state_dicts_bitwise_equal(hf, _from_pretrained(out, "float32"))


def _broken_folder(hf_tiny, tmp_path, kind):
    hf = hf_tiny.tiny_hf_model()
    d = tmp_path / kind
    hf.save_pretrained(d)
    path = d / "model.safetensors"
    if kind in ("missing_key", "wrong_shape", "extra_key"):
        sd = load_file(path)
        if kind == "missing_key":
            del sd["language_model.model.layers.1.mlp.up_proj.weight"]
            del sd["multi_modal_projector.linear_2.bias"]
        elif kind == "wrong_shape":
            sd["multi_modal_projector.linear_1.weight"] = torch.zeros(3, 3)
        else:
            sd["language_model.model.layers.7.mlp.up_proj.weight"] = torch.zeros(2, 2)
        save_file(sd, path, metadata={"format": "pt"})
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bin_only":
        path.unlink()
        torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    elif kind == "token_count":
        cfg = json.loads((d / "config.json").read_text())
        cfg["image_seq_length"] = 7
        (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("kind,message", [
    ("missing_key", r"missing keys \(2\):.*language_model\.model\.layers\.1\.mlp\.up_proj\.weight"),
    ("wrong_shape", r"shape mismatches \(1\):\s+multi_modal_projector\.linear_1\.weight: file has \[3, 3\]"),
    ("extra_key", r"unexpected keys \(1\):\s+language_model\.model\.layers\.7\.mlp\.up_proj\.weight"),
    ("truncated", r"model\.safetensors: truncated safetensors file"),
    ("bin_only", r"only pickled weights found \(pytorch_model\.bin\); refusing"),
    ("token_count", r"config\.json: image_seq_length=7 does not match the vision tower"),
])
def test_cli_bad_inputs_fail_clearly(tmp_path, kind, message, hf_tiny):
    import re

    src = _broken_folder(hf_tiny, tmp_path, kind)
    r = _cli("hf_to_orbax.py", "--hf_dir", src, "--out", tmp_path / "ckpt")
    assert r.returncode != 0
    assert re.search(message, r.stderr, re.S), r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "ckpt")
    assert [p for p in os.listdir(tmp_path) if "ckpt" in p] == []


def test_all_problems_reported_at_once(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    d = tmp_path / "src"
    hf.save_pretrained(d)
    sd = load_file(d / "model.safetensors")
    del sd["language_model.model.norm.weight"]
    sd["multi_modal_projector.linear_1.weight"] = torch.zeros(3, 3)
    sd["bogus.weight"] = torch.zeros(1)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(vkd_jax.models.hf_io.CheckpointError) as e:
        vkd_jax.load_hf(d)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg and "shape mismatches (1)" in msg
