"""IDK: NLL of a refusal ("I don't know.") on the forget questions + ℓ(D_r).

The refusal replaces each forget answer on the host (`host_transform`), keeping the prompt tokens and the padded
length, so the jitted step sees ordinary static-shape batches."""

import numpy as np

from vkd_jax.errors import ConfigError
from vkd_jax.unlearn.methods.common import Method, MethodSpec, nll


def refusal_batch(b: dict, refusal_ids: list[int], eos_id: int, pad_id: int) -> dict:
    b = dict(b)
    ids, lm = b["input_ids"].copy(), b["loss_mask"]
    T = ids.shape[1]
    new_ids = np.full_like(ids, pad_id)
    labels, loss_mask = np.full_like(ids, pad_id), np.zeros_like(lm)
    att, pos = np.zeros_like(b["attention_mask"]), np.zeros_like(b["positions"])
    ans = list(refusal_ids) + [eos_id]
    for r in range(ids.shape[0]):
        on = np.nonzero(lm[r] > 0)[0]
        real = np.nonzero(b["attention_mask"][r] > 0)[0]
        if not len(on) or not len(real):
            continue
        if real[0] != 0:
            raise ValueError("IDK needs right-padded training batches (PipelineConfig.padding_side='right')")
        n_prompt = int(on[0])
        n = n_prompt + len(ans)
        if n > T:
            raise ConfigError(f"IDK: prompt ({n_prompt}) + refusal ({len(ans)}) tokens exceed the padded length {T}; "
                              f"raise the pipeline's max_len")
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
