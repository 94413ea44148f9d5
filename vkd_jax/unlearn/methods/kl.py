"""KL: -ℓ(D_f) + ℓ(D_r) + KL(p_vanilla || p_θ) on retain answer positions (teacher logits: stop-gradient)."""

from vkd_jax.unlearn.methods.common import Method, MethodSpec, kl_teacher_student, nll


def make(cfg, tokenizer=None) -> Method:
    bound, w_r, w_kl = cfg["ga_bound"], cfg["retain_weight"], cfg["kl_weight"]

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        f, r = batch["forget"], batch["retain"]
        lf = nll(ctx.apply(full, f).logits, f, bound)
        s_logits = ctx.apply(full, r).logits
        lr = nll(s_logits, r)
        t_logits = ctx.apply(ctx.teacher(frozen, aux["teacher"]), r).logits
        kl = kl_teacher_student(t_logits, s_logits, r)
        return -lf + w_r * lr + w_kl * kl, {"nll_forget": lf, "nll_retain": lr, "kl_retain": kl}
    return Method("kl", ("forget", "retain"), loss, needs_teacher=True)


SPEC = MethodSpec("kl", make, fields=dict(ga_bound=0.0, retain_weight=1.0, kl_weight=1.0), partition="full")
