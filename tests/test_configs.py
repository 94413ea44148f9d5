"""Configs build the model they describe: the 7B abstractly, checked key by key against transformers."""

import importlib.util
import os

import numpy as np
import pytest

from vkd_jax.models.config import config_from_model_dict
from vkd_jax.models.hf_io import abstract_model, hf_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("name", ["llava7b", "tiny"])
def test_abstract_model_matches_transformers_param_count_and_shapes(name):
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = load_config(name)
    ours = config_from_model_dict(cfg.model, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    _, abstract = abstract_model(ours)  # jax.eval_shape: nothing allocated
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(LlavaConfig(**cfg.model.to_dict()))
    hf_params = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    n_ours = sum(int(np.prod(s.shape)) for s in abstract.values())
    assert n_ours == sum(p.numel() for p in hf.parameters())
    if name == "llava7b":
        assert 7_000_000_000 < n_ours < 7_200_000_000  # LLaVA-1.5-7B: 7.06B
    from vkd_jax.models.hf_io import hf_shape, normalize_hf_key

    hf_norm = {normalize_hf_key(k): s for k, s in hf_params.items()}
    for path, sds in abstract.items():
        key, tag = hf_key(path)
        assert hf_norm[key] == hf_shape(sds.shape, tag), key
    assert len(abstract) == len(hf_norm)


def test_config_remat_reaches_the_model():
    """`config.remat` (full in llava7b.py, as the memory plan needs) is applied to both towers of the model the
    pipeline trains; tiny runs without it."""
    import types

    from vkd_jax import experiment

    tok = types.SimpleNamespace(vocab_size=100, pad_id=0, eos_id=2, bos_id=1, image_token_id=4)
    data = types.SimpleNamespace(tokenizer=tok)
    for name, want in (("llava7b", "full"), ("tiny", "none")):
        cfg = load_config(name)
        cfg.hf_dir = ""
        mc = experiment._model_config(cfg, data)
        assert (mc.vision.remat, mc.text.remat) == (want, want), name
