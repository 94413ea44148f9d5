"""Our Flax LLaVA against transformers' LlavaForConditionalGeneration (torch, fp32, CPU) on tiny random models."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vkd_jax

pytestmark = pytest.mark.integration

TOL = 1e-4

VARIANTS = {
    "default": {},
    "mha_vfl_pos_full": dict(num_kv_heads=4, vision_feature_layer=1, strategy="full"),
    "vfl_list": dict(vision_feature_layer=[-3, -1]),
    "nobias_tied_headdim_v4rope": dict(projector_bias=False, tie=True, head_dim=24, rope="v4"),
    "attention_bias_mqa": dict(attention_bias=True, num_kv_heads=1),
}


def _save(hf, tmp_path, name="hf"):
    d = tmp_path / name
    hf.save_pretrained(d)
    return d


def _hf_logits(hf, ids, px, mask, position_ids=None):
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), pixel_values=None if px is None else torch.tensor(px),
                 attention_mask=torch.tensor(mask),
                 position_ids=None if position_ids is None else torch.tensor(position_ids),
                 output_hidden_states=True)
    return out


def _positions(mask):
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("pad", ["right", "left"])
def test_logits_match_transformers(tmp_path, variant, pad, hf_tiny):
    hf = hf_tiny.tiny_hf_model(**VARIANTS[variant])
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=3, n_images_rows=(0, 2), pad=pad)
    # HF's plain forward counts pad slots in positions; HF generate (and we) count real tokens only.
    ref = _hf_logits(hf, ids, px, mask, _positions(mask)).logits.numpy()
    ours = np.asarray(model(ids, px, mask))
    valid = mask.astype(bool)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)


def test_padding_side_never_changes_a_row(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids_r, px, mask_r = hf_tiny.make_inputs(hf.config, batch=3, n_images_rows=(0, 2), pad="right")
    ids_l, _, mask_l = hf_tiny.make_inputs(hf.config, batch=3, n_images_rows=(0, 2), pad="left")
    right = np.asarray(model(ids_r, px, mask_r))
    left = np.asarray(model(ids_l, px, mask_l))
    for b in range(3):
        np.testing.assert_allclose(right[b][mask_r[b] == 1], left[b][mask_l[b] == 1], atol=1e-5)
    # And a row computes the same alone as in a padded batch.
    alone = np.asarray(model(ids_r[1:2, : mask_r[1].sum()], None, mask_r[1:2, : mask_r[1].sum()]))
    np.testing.assert_allclose(alone[0], right[1][mask_r[1] == 1], atol=1e-5)


def test_text_only_batch_matches(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids, _, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(), pad="right")
    ref = _hf_logits(hf, ids, None, mask).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids, None, mask))[mask == 1], ref[mask == 1], atol=TOL)


def test_image_token_outside_vocabulary(tmp_path, hf_tiny):
    """An image token id >= vocab_size: those slots are overwritten by image features, so the result equals HF
    run with an in-vocabulary image id on the same weights."""
    hf_in = hf_tiny.tiny_hf_model(image_token_index=hf_tiny.VOCAB - 1)
    ref_dir = _save(hf_in, tmp_path, "in_vocab")
    hf_in.config.image_token_index = hf_tiny.VOCAB + 7
    out_dir = _save(hf_in, tmp_path, "out_of_vocab")
    hf_in.config.image_token_index = hf_tiny.VOCAB - 1
    ours = vkd_jax.load_hf(out_dir)
    assert ours.config.image_token_index == hf_tiny.VOCAB + 7
    ids, px, mask = hf_tiny.make_inputs(hf_in.config, batch=2, n_images_rows=(0, 1), pad="right")
    ref = _hf_logits(hf_in, ids, px, mask).logits.numpy()
    ids_oov = np.where(ids == hf_tiny.VOCAB - 1, hf_tiny.VOCAB + 7, ids)
    np.testing.assert_allclose(np.asarray(ours(ids_oov, px, mask))[mask == 1], ref[mask == 1], atol=TOL)
    assert vkd_jax.load_hf(ref_dir).config.image_token_index == hf_tiny.VOCAB - 1


@pytest.mark.parametrize("variant", ["default", "vfl_list", "mha_vfl_pos_full"])
def test_features_match_hidden_states(tmp_path, variant, hf_tiny):
    hf = hf_tiny.tiny_hf_model(**VARIANTS[variant])
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(0, 1), pad="right")
    out = _hf_logits(hf, ids, px, mask)
    n_llm = hf.config.text_config.num_hidden_layers
    taps = ("vision:0", "vision:-2", "vision:2", "projector", "llm:0", "llm:1", f"llm:{n_llm - 1}")
    res = model.forward(ids, px, mask, taps=taps)
    vis = out.image_outputs.hidden_states
    for i in (0, -2, 2):
        np.testing.assert_allclose(np.asarray(res.features[f"vision:{i}"]), vis[i].numpy(), atol=TOL)
    proj = torch.stack(list(out.image_outputs.pooler_output)).numpy()
    np.testing.assert_allclose(np.asarray(res.features["projector"]), proj, atol=TOL)
    is_img = ids == hf.config.image_token_index
    for j in (0, 1, n_llm - 1):
        ref = out.hidden_states[j].numpy()[is_img].reshape(proj.shape)
        np.testing.assert_allclose(np.asarray(res.features[f"llm:{j}"]), ref, atol=TOL)
    # Asking for taps alone runs only what they need and gives the same numbers.
    only = model.forward(ids, px, mask, taps=("llm:1", "projector"), compute_logits=False)
    assert only.logits is None
    np.testing.assert_allclose(np.asarray(only.features["llm:1"]), np.asarray(res.features["llm:1"]), atol=1e-6)


def test_kv_cache_decoding_matches_full_forward(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(0, 1), pad="left")
    full = np.asarray(model(ids, px, mask))
    t = ids.shape[1]
    prompt = t - 3
    cache = model.init_cache(batch=2, max_len=t + 2)
    kv_mask = np.zeros((2, t + 2), bool)
    kv_mask[:, :t] = mask.astype(bool)
    res = model.forward(ids[:, :prompt], px, kv_mask, cache=cache)
    valid = mask[:, :prompt] == 1  # padded slots compute nothing meaningful
    np.testing.assert_allclose(np.asarray(res.logits)[valid], full[:, :prompt][valid], atol=1e-5)
    last = model.forward(ids[:, :prompt], px, kv_mask, cache=model.init_cache(batch=2, max_len=t + 2),
                         last_logits_only=True)
    assert last.logits.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(np.asarray(last.logits[:, 0]), full[:, prompt - 1], atol=1e-5)
    cache = res.cache
    for s in range(prompt, t):
        res = model.forward(ids[:, s:s + 1], None, kv_mask, cache=cache)
        cache = res.cache
        np.testing.assert_allclose(np.asarray(res.logits[:, 0]), full[:, s], atol=1e-5)
    assert int(cache.index) == t


def test_bf16_model_agrees_with_fp32_reference(tmp_path, hf_tiny):
    """bf16 params and compute: compare next-token distributions to torch fp32 with a KL gate + top-1 agreement."""
    hf = hf_tiny.tiny_hf_model()
    model = vkd_jax.load_hf(_save(hf, tmp_path), dtype="bfloat16", param_dtype="bfloat16")
    assert model.language_model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=3, n_images_rows=(0, 2), pad="right")
    ref = _hf_logits(hf, ids, px, mask).logits.numpy()[mask == 1]
    ours = np.asarray(model(ids, px, mask).astype(jnp.float32))[mask == 1]
    logp = torch.log_softmax(torch.tensor(ref), -1)
    logq = torch.log_softmax(torch.tensor(ours), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    assert kl < 1e-3, kl
    assert (ref.argmax(-1) == ours.argmax(-1)).mean() >= 0.9


def test_token_count_mismatch_is_a_clear_error(tmp_path, hf_tiny):
    hf = hf_tiny.tiny_hf_model()
    model = vkd_jax.load_hf(_save(hf, tmp_path))
    ids, px, mask = hf_tiny.make_inputs(hf.config, batch=2, n_images_rows=(0, 1))
    with pytest.raises(ValueError, match="image tokens and image features do not match"):
        model(ids, px[:1], mask)
