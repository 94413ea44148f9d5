"""vkd_jax.preprocess_images against transformers' CLIP/LLaVA image processors (PIL backend)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

import vkd_jax

pytestmark = pytest.mark.unit


def _images(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(400, 300), (336, 336), (120, 500), (17, 40)]  # landscape, square, tall, smaller than the crop
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    ims.append(Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)))  # greyscale -> RGB
    return ims


@pytest.mark.parametrize("pad", [False, True])
def test_matches_hf_processor(tmp_path, pad):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    hf = LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                do_pad=pad, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["do_pad"] is pad
    for im in _images():
        ref = hf(im, return_tensors="np")["pixel_values"]
        ours = vkd_jax.preprocess_images([im], tmp_path)
        assert ours.shape == ref.shape == (1, 3, 336, 336)
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_clip_processor_defaults_and_inputs():
    from transformers import CLIPImageProcessor

    hf = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ims = _images(1)
    ref = np.concatenate([hf(im, return_tensors="np")["pixel_values"] for im in ims])
    # PIL images, uint8 arrays and encoded bytes all give the same values.
    assert np.allclose(vkd_jax.preprocess_images(ims), ref, atol=1e-5)
    arrays = [np.asarray(im.convert("RGB")) for im in ims]
    assert np.allclose(vkd_jax.preprocess_images(arrays), ref, atol=1e-5)
    encoded = []
    for im in ims:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded.append(buf.getvalue())
    assert np.allclose(vkd_jax.preprocess_images(encoded), ref, atol=1e-5)


def test_small_config_from_folder(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5],
         "image_std": [0.5, 0.5, 0.5]}))
    x = vkd_jax.preprocess_images([Image.new("RGB", (64, 48), (255, 0, 128))], tmp_path)
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 5, 5], [1.0, -1.0, 128 / 255 * 2 - 1], atol=1e-6)


def test_bad_config_is_named(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: not valid JSON"):
        vkd_jax.preprocess_images([Image.new("RGB", (8, 8))], tmp_path)
