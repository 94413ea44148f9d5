"""MMUnlearner: one masked ascent step on a forget batch, then `retain_steps` plain descent steps on retain batches.

The Fisher-ratio mask (masks stage, over the modules the partition trains) multiplies the update of the forget
steps only (`mask_when`); retain steps move every trainable weight. Both batches arrive every step (static
shapes); `lax.cond` runs only the phase's branch."""

import jax

from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def make(cfg, tokenizer=None) -> Method:
    period = int(cfg["retain_steps"]) + 1
    bound = cfg["ga_bound"]

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)

        def forget(_):
            lf = nll(ctx.apply(full, batch["forget"]).logits, batch["forget"], bound)
            return -lf
        def retain(_):
            return nll(ctx.apply(full, batch["retain"]).logits, batch["retain"])
        is_forget = step % period == 0
        out = jax.lax.cond(is_forget, forget, retain, None)
        return out, {"forget_phase": is_forget.astype("float32")}
    return Method("mmunlearner", ("forget", "retain"), loss, needs_masks=True,
                  mask_when=lambda step: step % period == 0)


SPEC = MethodSpec("mmunlearner", make, fields=dict(retain_steps=1, ga_bound=0.0), partition="full")
