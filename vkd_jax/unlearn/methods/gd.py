"""GD (gradient difference): L = -ℓ(D_f) + ℓ(D_r), one forget and one retain batch per step."""

from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def make(cfg, tokenizer=None) -> Method:
    bound, w_r = cfg["ga_bound"], cfg["retain_weight"]

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        lf = nll(ctx.apply(full, batch["forget"]).logits, batch["forget"], bound)
        lr = nll(ctx.apply(full, batch["retain"]).logits, batch["retain"])
        return -lf + w_r * lr, {"nll_forget": lf, "nll_retain": lr}
    return Method("gd", ("forget", "retain"), loss)


SPEC = MethodSpec("gd", make, fields=dict(ga_bound=0.0, retain_weight=1.0), partition="full")
