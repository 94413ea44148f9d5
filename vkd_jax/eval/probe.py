"""The representation probe attack: does the visual side still tell the forget people apart?

A linear probe (multinomial logistic regression, L2-regularised, full-batch, deterministic) is trained on a
model's visual features, the projector output averaged over the image tokens, of the retain people's and the
forget people's *training* images, labelled with who is shown; it is scored on *held-out* images of the same people
(MLLMU-Bench: Test_Set poses; CLEAR: the perturbed sets' renderings). Unlearning that forgets in the representation
drives the forget people's probe accuracy toward chance (1 / number of people) while the retain people's stays; a
model that only stopped *saying* the answer keeps both high.

    out = probe_attack(model, probe_data, image_cfg)   # {"forget_acc", "retain_acc", "chance", "n_*"}
`probe_data` comes from the benchmark (`Benchmark.probe_data()`): lists of (source, row, pose, label) for train,
forget-test and retain-test images.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vkd_jax.preprocess import preprocess_one


@dataclasses.dataclass(frozen=True)
class ProbeData:
    train: list      # (source, row, pose, label)
    forget_test: list
    retain_test: list
    num_classes: int


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    steps: int = 300
    lr: float = 0.5
    l2: float = 1e-3
    batch_size: int = 64


def _image_bytes(source, row, pose):
    rec = source[row]
    if pose is not None:
        imgs = rec["images"]
        return bytes((imgs["bytes"] if isinstance(imgs, dict) else [x["bytes"] for x in imgs])[pose])
    return bytes(rec["image"]["bytes"])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _features(graphdef, state, pixel_values):
    model = nnx.merge(graphdef, state)
    feats, _ = model.encode_images(pixel_values, ())
    return feats.astype(jnp.float32).mean(axis=1)  # [N, D]: mean over the image tokens


def features(model, items: list, image_cfg, batch_size: int = 64) -> np.ndarray:
    """[len(items), D] projector features (mean over image tokens) of the items' images."""
    graphdef, state = nnx.split(model)
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        px = np.stack([preprocess_one(_image_bytes(s, r, p), image_cfg) for s, r, p, _ in chunk])
        n = len(chunk)
        if n < batch_size:  # static shapes: pad with copies of the first image
            px = np.concatenate([px, np.repeat(px[:1], batch_size - n, axis=0)])
        out.append(np.asarray(_features(graphdef, state, jnp.asarray(px)))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, num_classes: int, steps: int, lr: float, l2: float):
    w = jnp.zeros((x.shape[1], num_classes), jnp.float32)
    b = jnp.zeros((num_classes,), jnp.float32)

    def loss(params):
        w, b = params
        logits = x @ w + b
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y]) + l2 * jnp.sum(w * w)

    def step(params, _):
        g = jax.grad(loss)(params)
        return jax.tree.map(lambda p, d: p - lr * d, params, g), None
    (w, b), _ = jax.lax.scan(step, (w, b), None, length=steps)
    return w, b


def fit_and_score(train_x, train_y, tests: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int,
                  cfg: ProbeConfig = ProbeConfig()) -> dict[str, float]:
    """Standardise by the train features, fit, and score each test set (accuracy in %)."""
    return {k: float(100.0 * np.mean(c)) if len(c) else float("nan")
            for k, c in probe_hits(train_x, train_y, tests, num_classes, cfg).items()}


def probe_hits(train_x, train_y, tests: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int,
               cfg: ProbeConfig = ProbeConfig()) -> dict[str, np.ndarray]:
    """Per test image, whether the fitted probe names the person shown."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    z = lambda a: jnp.asarray((a - mu) / sd, jnp.float32)  # noqa: E731
    w, b = _fit(z(train_x), jnp.asarray(train_y, jnp.int32), num_classes, cfg.steps, cfg.lr, cfg.l2)
    out = {}
    for name, (x, y) in tests.items():
        out[name] = (np.asarray(jnp.argmax(z(x) @ w + b, axis=-1)) == np.asarray(y)) if len(y) else np.zeros(0, bool)
    return out


def probe_attack(model, data: ProbeData, image_cfg, cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Accuracies with 95% intervals (bootstrap over the people shown) and, per test image, [person label, hit]
    (`*_items`, which runs pool over forget splits)."""
    from vkd_jax.eval.intervals import with_intervals

    feats = {k: features(model, getattr(data, k), image_cfg, cfg.batch_size)
             for k in ("train", "forget_test", "retain_test")}
    labels = {k: np.asarray([it[3] for it in getattr(data, k)]) for k in feats}
    hits = probe_hits(feats["train"], labels["train"],
                      {"forget_acc": (feats["forget_test"], labels["forget_test"]),
                       "retain_acc": (feats["retain_test"], labels["retain_test"])}, data.num_classes, cfg)
    out = {"chance": 100.0 / data.num_classes, "num_classes": data.num_classes, "n_train": len(data.train),
           "n_forget_test": len(data.forget_test), "n_retain_test": len(data.retain_test)}
    for key, test in (("forget_acc", "forget_test"), ("retain_acc", "retain_test")):
        items = [(int(lab), float(100.0 * h)) for lab, h in zip(labels[test], hits[key])]
        out.update(with_intervals({key: items}))
        out[f"{key}_items"] = [[lab, h / 100.0] for lab, h in items]
    return out
