"""Plain fine-tuning (the `vanilla`, `reference` and `relearn` stages): sum of answer NLLs over the streams."""

from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def make(cfg, tokenizer=None) -> Method:
    streams = tuple(cfg["streams"])

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        terms = {f"nll_{s}": nll(ctx.apply(full, batch[s]).logits, batch[s]) for s in streams}
        return sum(terms.values()), terms
    return Method("ft", streams, loss)


# no unlearning method: the fine-tuning stages' sections (config.stages.<stage>) carry its one field
SPEC = MethodSpec("ft", make, fields=dict(streams=("vqa", "qa")))
