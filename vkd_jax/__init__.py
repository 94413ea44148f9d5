"""vkd_jax: MLLM unlearning via Visual Knowledge Distillation, in JAX/Flax (LLaVA-1.5).

Public API (lazy imports keep `import vkd_jax` cheap):
    model = vkd_jax.load_hf(hf_dir, dtype="float32")
    logits = model(input_ids, pixel_values, attention_mask)
    vkd_jax.save_hf(model, out_dir)
    pixel_values = vkd_jax.preprocess_images(images, hf_dir)
"""

__version__ = "0.1.0"

_LAZY = {
    "load_hf": "vkd_jax.models.hf_io",
    "save_hf": "vkd_jax.models.hf_io",
    "preprocess_images": "vkd_jax.preprocess",
    "Llava": "vkd_jax.models.llava",
    "LlavaConfig": "vkd_jax.models.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vkd_jax' has no attribute {name!r}")
