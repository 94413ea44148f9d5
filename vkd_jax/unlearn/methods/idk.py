"""IDK: NLL of a refusal ("I don't know.") on the forget questions + ℓ(D_r).

The refusal replaces each forget answer on the host (`host_transform`), keeping the prompt tokens and the padded
length, so the jitted step sees ordinary static-shape batches. A refusal longer than the answer it replaces can
overflow the batch's length bucket; in a one-process run that batch then grows to the next power of two (a few more
shapes to compile). Processes of a multi-process run must agree on every batch's shape without seeing each other's
rows, so there it stays an error naming the fix."""

import jax
import numpy as np

from vkd_jax.errors import ConfigError
from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def refusal_batch(b: dict, refusal_ids: list[int], eos_id: int, pad_id: int) -> dict:
    b = dict(b)
    ids, lm = b["input_ids"].copy(), b["loss_mask"]
    ans = list(refusal_ids) + [eos_id]
    rows = [r for r in range(ids.shape[0]) if (lm[r] > 0).any() and (b["attention_mask"][r] > 0).any()]
    need = max((int(np.nonzero(lm[r] > 0)[0][0]) + len(ans) for r in rows), default=0)
    T = ids.shape[1]
    if need > T:
        if jax.process_count() > 1:
            raise ConfigError(f"IDK: prompt + refusal ({len(ans)} tokens) need {need} tokens, more than the batch's "
                              f"padded length {T}; raise config.data.max_len or the length buckets")
        T = 1 << (need - 1).bit_length()
    new_ids = np.full((ids.shape[0], T), pad_id, ids.dtype)
    labels, loss_mask = np.full_like(new_ids, pad_id), np.zeros((ids.shape[0], T), lm.dtype)
    att = np.zeros((ids.shape[0], T), b["attention_mask"].dtype)
    pos = np.zeros((ids.shape[0], T), b["positions"].dtype)
    for r in rows:
        on = np.nonzero(lm[r] > 0)[0]
        if b["attention_mask"][r, 0] == 0:
            raise ValueError("IDK needs right-padded training batches (PipelineConfig.padding_side='right')")
        n_prompt = int(on[0])
        n = n_prompt + len(ans)
        new_ids[r, :n] = np.concatenate([ids[r, :n_prompt], ans])
        labels[r, n_prompt:n], loss_mask[r, n_prompt:n] = ans, 1
        att[r, :n], pos[r, :n] = 1, np.arange(n)
    b.update(input_ids=new_ids, labels=labels, loss_mask=loss_mask, attention_mask=att, positions=pos)
    return b


def make(cfg, tokenizer=None) -> Method:
    w_r, text = cfg["retain_weight"], cfg["refusal"]
    transform = None
    if tokenizer is not None:
        ids = tokenizer.encode(" " + text, add_bos=False)
        eos, pad = tokenizer.eos_id, tokenizer.pad_id

        def transform(stream, b):
            return refusal_batch(b, ids, eos, pad) if stream == "forget" else b

    def loss(ctx, trainable, frozen, aux, batch, rng, step):
        full = ctx.student(trainable, frozen, rng)
        lf = nll(ctx.apply(full, batch["forget"]).logits, batch["forget"])
        lr = nll(ctx.apply(full, batch["retain"]).logits, batch["retain"])
        return lf + w_r * lr, {"nll_idk": lf, "nll_retain": lr}
    return Method("idk", ("forget", "retain"), loss, host_transform=transform)


SPEC = MethodSpec("idk", make, fields=dict(retain_weight=1.0, refusal="I don't know."), partition="full")
