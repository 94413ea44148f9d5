"""Plain fine-tuning (the `vanilla`, `reference` and `relearn` stages): sum of answer NLLs over the streams."""

from vkd_jax.unlearn.methods.common import Method, get, nll


def make(cfg, tokenizer=None) -> Method:
    streams = tuple(get(cfg, "streams", ("vqa", "qa")))

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        terms = {f"nll_{s}": nll(ctx.apply(full, batch[s]).logits, batch[s]) for s in streams}
        return sum(terms.values()), terms
    return Method("ft", streams, loss)
