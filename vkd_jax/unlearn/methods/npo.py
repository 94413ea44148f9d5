"""NPO: L = (2/β) E_{D_f} log(1 + (π_θ/π_ref)^β) = (2/β) E softplus(β (log π_θ - log π_ref)) (+ a_r ℓ(D_r)).

log π = the answer's sequence log-likelihood (`mean_token=True`: the per-token mean, as the public MLLMU-Bench
code). π_ref = the `reference` params (retain-only fine-tune) or, with reference="vanilla", the vanilla model (the
stages read that switch: it decides which params arrive as aux["reference"])."""

import jax
import jax.numpy as jnp

from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll, seq_logp


def npo_loss(logp, logp_ref, beta):
    return (2.0 / beta) * jnp.mean(jax.nn.softplus(beta * (logp - logp_ref)))


def make(cfg, tokenizer=None) -> Method:
    beta, w_r, mean = cfg["beta"], cfg["retain_weight"], cfg["mean_token"]
    streams = ("forget", "retain") if w_r else ("forget",)

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        f = batch["forget"]
        logits = ctx.apply(full, f).logits
        ref = jax.lax.stop_gradient(aux["reference"])
        lp, lp_ref = seq_logp(logits, f, mean), seq_logp(ctx.apply(ref, f).logits, f, mean)
        out = npo_loss(lp, lp_ref, beta)
        m = {"npo": out, "logratio": jnp.mean(lp - lp_ref)}
        if w_r:
            lr = nll(ctx.apply(full, batch["retain"]).logits, batch["retain"])
            out, m["nll_retain"] = out + w_r * lr, lr
        return out, m
    return Method("npo", streams, loss, needs_reference=True)


SPEC = MethodSpec("npo", make, fields=dict(beta=0.4, retain_weight=0.0, mean_token=False, reference="retain"),
                  choices=dict(reference=("retain", "vanilla")), limits=dict(beta=(">", 0.0)), partition="full")
