"""GA: L = -ℓ(D_f) (optionally bounded per token, `ga_bound`)."""

from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def make(cfg, tokenizer=None) -> Method:
    bound = cfg["ga_bound"]

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        lf = nll(ctx.apply(ctx.student(trainable, frozen, rng), batch["forget"]).logits, batch["forget"], bound)
        return -lf, {"nll_forget": lf}
    return Method("ga", ("forget",), loss)


SPEC = MethodSpec("ga", make, fields=dict(ga_bound=0.0), partition="full")
