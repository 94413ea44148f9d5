"""Activation checkpointing (config.with_remat): same loss and gradients as without, the backward really
recomputes (a remat primitive per block in the jaxpr), and the switch never reaches config.json."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax.models.config import ConfigError, config_from_hf_dict, config_to_hf_dict
from vkd_jax.models.hf_io import abstract_model, model_from_flat_params

pytestmark = pytest.mark.integration


def _loss_fn(cfg):
    graphdef, _ = abstract_model(cfg)

    def loss(params, b):
        m = model_from_flat_params(graphdef, params)
        out = m.forward(b["input_ids"], b["pixel_values"], b["attention_mask"].astype(bool),
                        position_ids=b["positions"], taps=("projector",))
        lp = jax.nn.log_softmax(out.logits[:, :-1], -1)
        tok = jnp.take_along_axis(lp, b["labels"][:, 1:, None], -1)[..., 0]
        return -jnp.mean(tok * b["loss_mask"][:, 1:]) + jnp.mean(out.features["projector"] ** 2)
    return loss


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gradients_match(policy, ukit):
    cfg, params = ukit.tiny_params(seed=3)
    b = {k: jnp.asarray(v) for k, v in ukit.make_batch(np.random.default_rng(0)).items() if k != "has_image"}
    plain = jax.jit(jax.value_and_grad(_loss_fn(cfg)))(params, b)
    rcfg = cfg.with_remat(policy)
    remat = jax.jit(jax.value_and_grad(_loss_fn(rcfg)))(params, b)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(remat[1][k], plain[1][k], rtol=1e-5, atol=1e-7, err_msg=str(k))
    n_blocks = cfg.vision.num_hidden_layers + cfg.text.num_hidden_layers
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss_fn(rcfg)))(params, b))
    assert jaxpr.count("remat") + jaxpr.count("checkpoint[") >= n_blocks
    assert "remat" not in str(jax.make_jaxpr(jax.grad(_loss_fn(cfg)))(params, b))


def test_remat_is_runtime_only(ukit):
    cfg, _ = ukit.tiny_params()
    rcfg = cfg.with_remat("dots", vision=False)
    assert rcfg.vision.remat == "none" and rcfg.text.remat == "dots"
    assert config_to_hf_dict(rcfg) == config_to_hf_dict(cfg)
    assert config_from_hf_dict(config_to_hf_dict(rcfg)).text.remat == "none"
    with pytest.raises(ConfigError, match="remat='everything'"):
        cfg.with_remat("everything")


def test_remat_pins_forward_and_recompute_order(ukit):
    """Every rematted block carries two optimization barriers in the gradient: its forward waits for its inputs
    (FSDP all-gathers of its weights happen when it runs) and its recompute waits for its incoming cotangent
    (else a scheduler may hoist all recomputes to the start of the backward pass and remat saves nothing)."""
    cfg, params = ukit.tiny_params(seed=3)
    b = {k: jnp.asarray(v) for k, v in ukit.make_batch(np.random.default_rng(0)).items() if k != "has_image"}
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss_fn(cfg.with_remat("full"))))(params, b))
    n_blocks = cfg.vision.num_hidden_layers + cfg.text.num_hidden_layers
    assert jaxpr.count("optimization_barrier") >= 2 * n_blocks
    assert "optimization_barrier" not in str(jax.make_jaxpr(jax.grad(_loss_fn(cfg)))(params, b))


def _dots(jaxpr) -> int:
    """dot_general equations of a jaxpr, nested jaxprs (remat, custom_vjp, pjit) included."""
    n = 0
    for e in jaxpr.eqns:
        n += e.primitive.name == "dot_general"
        for v in e.params.values():
            for x in (v if isinstance(v, (list, tuple)) else (v,)):
                if isinstance(x, jax.extend.core.ClosedJaxpr):
                    n += _dots(x.jaxpr)
                elif isinstance(x, jax.extend.core.Jaxpr):
                    n += _dots(x)
    return n


def test_remat_computes_no_gradient_of_what_is_not_differentiated(ukit):
    """Only the visual side differentiated (VKD's frozen LLM): with remat the backward adds the recomputed
    forward and nothing else, no weight-gradient matmuls of the frozen blocks."""
    cfg, params = ukit.tiny_params(seed=3)
    b = {k: jnp.asarray(v) for k, v in ukit.make_batch(np.random.default_rng(0)).items() if k != "has_image"}
    visual = {k: v for k, v in params.items() if not k.startswith("language_model")}
    frozen = {k: v for k, v in params.items() if k.startswith("language_model")}
    assert visual and frozen

    def dots(c, grad):
        loss = _loss_fn(c)
        f = jax.grad(lambda v: loss({**v, **frozen}, b)) if grad else (lambda v: loss({**v, **frozen}, b))
        return _dots(jax.make_jaxpr(f)(visual).jaxpr)
    plain, remat, forward = dots(cfg, True), dots(cfg.with_remat("full"), True), dots(cfg, False)
    assert plain < remat <= plain + forward  # the recompute is at most one more forward
    v_g = jax.grad(lambda v: _loss_fn(cfg.with_remat("full"))({**v, **frozen}, b))(visual)
    p_g = jax.grad(lambda v: _loss_fn(cfg)({**v, **frozen}, b))(visual)
    for k in visual:
        np.testing.assert_allclose(v_g[k], p_g[k], rtol=1e-5, atol=1e-7, err_msg=str(k))
