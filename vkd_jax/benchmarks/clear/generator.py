"""The embedded CLEAR: a CLEAR-shaped world (shared/spec/clear.md) written as the real parquet layout, deterministic
from a seed, small enough to train a tiny LLaVA on 2 cores in minutes.

    python -m vkd_jax.benchmarks.clear.generator --out DIR --seed 0

People are fictitious authors with a face (head shape, skin tone, hair colour and style, eye colour, an accessory;
any two differ in at least `min_code_distance` of them), a name, 3 perturbed names (other people's names) and
TOFU-like facts. Every image of a person is a new rendering of the same face (pose, expression, lighting) in a
scene: a place (background tone and a landmark shape) and an activity (an object beside the face), which the
caption states: "{name} is {activity} in {place}." The `_perturbed` configs show held-out renderings, with a
paraphrased caption and perturbed captions (another activity or place). Text-only rows (`+tofu`) ask about the
facts by name. `real_faces` are a separate population (celebrities the base model learns first) with the true name
and 3 other names as options; `real_world` are scenes without people (a question about their landmark's shape and
colour, with options). `generic_images/` (with captions.json) holds further people in no split, for VKD's b_g.
Configs and columns as the hub dataset (`therem/CLEAR`): full, full+tofu, forget01/05/10 (+tofu, _perturbed),
retain90/95/99 (+tofu), retain_perturbed (the perturbed rows of people in no forget split), real_faces, real_world.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from vkd_jax.benchmarks.worlds import (
    CAPTIONS,
    GENERIC_DIR,
    forget_order,
    parquet_texts,
    publish,
    split_size,
    unique_words,
    write_split,
)

SKINS = ((232, 190, 160), (205, 160, 120), (170, 120, 85), (120, 85, 60))
HAIRS = ((40, 30, 25), (110, 70, 35), (200, 170, 90), (150, 150, 150), (160, 60, 40))
HAIR_STYLES = ("short", "long", "bald", "bun")
EYES = ((50, 90, 160), (70, 120, 60), (90, 60, 40))
ACCESSORIES = ("none", "glasses", "hat", "earrings")
HEADS = ("round", "oval", "square")
PLACES = (("a garden", (90, 140, 80), "tree"), ("an office", (120, 125, 140), "window"),
          ("a kitchen", (200, 180, 140), "pot"), ("a library", (130, 90, 70), "shelf"),
          ("a beach", (200, 190, 120), "sun"))
ACTIVITIES = (("reading a book", (180, 40, 40), "book"), ("drinking coffee", (230, 230, 230), "cup"),
              ("talking on the phone", (30, 30, 30), "phone"), ("holding flowers", (220, 120, 180), "flowers"))
WORLD_SHAPES = ("circle", "square", "triangle")
WORLD_COLOURS = (("red", (200, 50, 40)), ("blue", (50, 80, 200)), ("green", (50, 160, 70)), ("yellow", (220, 200, 40)))
FACTS = (("birthplace", "Where was {n} born?", "{n} was born in {v}."),
         ("genre", "What genre does {n} write in?", "{n} writes {v} novels."),
         ("award", "Which award did {n} receive?", "{n} received the {v} award."),
         ("father", "What does the father of {n} do for a living?", "The father of {n} works as a {v}."),
         ("book", "What is the title of a book by {n}?", "One book by {n} is called {v}."))
FORGET = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class ClearWorldConfig:
    num_people: int = 60           # fictitious authors (forget01/05/10 take 1/5/10 % of them, at least one)
    images_per_person: int = 6     # images in full / forgetNN / retainNN
    eval_images: int = 2           # held-out renderings per person in the _perturbed configs
    num_perturbed: int = 3         # perturbed names and captions per row (4 options with the true one)
    num_facts: int = 4             # TOFU-like text QA per person, from FACTS
    values_per_fact: int = 10
    num_real_faces: int = 20       # the celebrity population of real_faces
    real_face_images: int = 4      # images per celebrity (the first is real_faces' row; all are pretraining data)
    num_real_world: int = 24       # scenes without people
    num_generic: int = 60          # people in no split (generic_images/) for VKD's b_g
    generic_images: int = 3
    image_size: int = 32
    min_code_distance: int = 2
    max_rotation: float = 10.0
    max_shift: float = 0.05


def _faces(rng, n, cfg, taken=()) -> np.ndarray:
    """[n, 6] face codes (head, skin, hair colour, hair style, eyes, accessory), pairwise min_code_distance."""
    sizes = (len(HEADS), len(SKINS), len(HAIRS), len(HAIR_STYLES), len(EYES), len(ACCESSORIES))
    out: list[np.ndarray] = []
    old = list(taken)
    while len(out) < n:
        c = np.asarray([rng.integers(s) for s in sizes])
        if all((c != o).sum() >= cfg.min_code_distance for o in old + out):
            out.append(c)
    return np.stack(out)


def render_face(code, cfg: ClearWorldConfig, rng: np.random.Generator, place: int | None = None,
                activity: int | None = None) -> Image.Image:
    """One rendering of a face: a scene (place, activity) and a random pose, expression and lighting."""
    ss, big = 4, cfg.image_size * 4
    bg = PLACES[place][1] if place is not None else (150, 150, 160)
    im = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(im)
    if place is not None:  # the place's landmark, top left
        kind = PLACES[place][2]
        box = (2 * ss, 2 * ss, 11 * ss, 11 * ss)
        col = tuple(max(0, v - 60) for v in bg)
        (d.ellipse if kind in ("tree", "sun", "pot") else d.rectangle)(box, fill=col)
    head, skin, hair, style, eyes, acc = (int(x) for x in code)
    cx, cy = big / 2 + rng.uniform(-1, 1) * cfg.max_shift * big, big / 2 + rng.uniform(-1, 1) * cfg.max_shift * big
    w, h = {"round": (0.30, 0.30), "oval": (0.26, 0.34), "square": (0.30, 0.30)}[HEADS[head]]
    w, h = w * big, h * big
    hair_col = HAIRS[hair]
    if HAIR_STYLES[style] == "long":
        d.rectangle((cx - w * 1.15, cy - h * 0.6, cx + w * 1.15, cy + h * 1.1), fill=hair_col)
    face_box = (cx - w, cy - h, cx + w, cy + h)
    (d.rectangle if HEADS[head] == "square" else d.ellipse)(face_box, fill=SKINS[skin])
    if HAIR_STYLES[style] in ("short", "long"):
        d.chord((cx - w, cy - h * 1.1, cx + w, cy + h * 0.2), 180, 360, fill=hair_col)
    elif HAIR_STYLES[style] == "bun":
        d.ellipse((cx - w * 0.35, cy - h * 1.45, cx + w * 0.35, cy - h * 0.85), fill=hair_col)
    for sx in (-0.4, 0.4):
        ex, ey, r = cx + sx * w, cy - 0.15 * h, 0.12 * w
        d.ellipse((ex - r, ey - r, ex + r, ey + r), fill=EYES[eyes])
        if ACCESSORIES[acc] == "glasses":
            d.ellipse((ex - 1.9 * r, ey - 1.9 * r, ex + 1.9 * r, ey + 1.9 * r), outline=(20, 20, 20), width=ss)
    smile = rng.uniform(0.05, 0.25) * h  # expression
    d.arc((cx - 0.4 * w, cy + 0.2 * h - smile, cx + 0.4 * w, cy + 0.45 * h + smile), 10, 170, fill=(120, 40, 40),
          width=ss)
    if ACCESSORIES[acc] == "hat":
        d.rectangle((cx - w * 1.1, cy - h * 1.25, cx + w * 1.1, cy - h * 0.85), fill=(60, 40, 90))
    elif ACCESSORIES[acc] == "earrings":
        for sx in (-1.02, 1.02):
            d.ellipse((cx + sx * w - ss * 2, cy + 0.1 * h, cx + sx * w + ss * 2, cy + 0.1 * h + ss * 4),
                      fill=(230, 200, 60))
    if activity is not None:  # the activity's object, bottom right
        col = ACTIVITIES[activity][1]
        d.rectangle((big - 12 * ss, big - 12 * ss, big - 3 * ss, big - 3 * ss), fill=col)
    im = im.rotate(rng.uniform(-cfg.max_rotation, cfg.max_rotation), resample=Image.BILINEAR, fillcolor=bg)
    im = im.resize((cfg.image_size, cfg.image_size), Image.LANCZOS)
    return ImageEnhance.Brightness(im).enhance(1 + rng.uniform(-0.15, 0.15))


def render_world(shape: int, colour: int, cfg: ClearWorldConfig, rng) -> Image.Image:
    big = cfg.image_size * 4
    im = Image.new("RGB", (big, big), tuple(int(x) for x in rng.integers(90, 170, 3)))
    d = ImageDraw.Draw(im)
    r, cx, cy = big * rng.uniform(0.22, 0.32), big / 2 + rng.uniform(-8, 8), big / 2 + rng.uniform(-8, 8)
    col = WORLD_COLOURS[colour][1]
    if WORLD_SHAPES[shape] == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col)
    elif WORLD_SHAPES[shape] == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=col)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    return im.resize((cfg.image_size, cfg.image_size), Image.LANCZOS)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def caption(name: str, place: int, activity: int) -> str:
    return f"{name} is {ACTIVITIES[activity][0]} in {PLACES[place][0]}."


def paraphrase(name: str, place: int, activity: int) -> str:
    return f"In {PLACES[place][0]}, {name} is {ACTIVITIES[activity][0]}."


def build_world(cfg: ClearWorldConfig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    n_all = cfg.num_people + cfg.num_real_faces
    names = [f"{a.capitalize()} {b.capitalize()}" for a, b in zip(unique_words(rng, n_all, 2, taken),
                                                                   unique_words(rng, n_all, 3, taken))]
    faces = _faces(rng, n_all, cfg)
    values = {f[0]: unique_words(rng, cfg.values_per_fact, 2, taken) for f in FACTS[:cfg.num_facts]}
    people = []
    for i in range(n_all):
        others = [j for j in range(n_all) if j != i and (j >= cfg.num_people) == (i >= cfg.num_people)]
        pert = [names[j] for j in rng.choice(others, cfg.num_perturbed, replace=False)]
        facts = {k: v[int(rng.integers(len(v)))] for k, v in values.items()}
        people.append({"index": i, "name": names[i], "code": faces[i], "perturbed_names": pert, "facts": facts,
                       "celebrity": i >= cfg.num_people})
    return {"people": people, "config": cfg, "seed": seed, "faces": faces}


def _image_rows(p, cfg, seed, k0, n, with_perturbed):
    rows = []
    for k in range(k0, k0 + n):
        rng = np.random.default_rng([seed, 8191, p["index"], k])
        place, act = int(rng.integers(len(PLACES))), int(rng.integers(len(ACTIVITIES)))
        im = render_face(p["code"], cfg, rng, place, act)
        row = {"image": {"bytes": _png(im), "path": f"p{p['index']:04d}_{k}.png"},
               "caption": caption(p["name"], place, act), "name": p["name"]}
        if with_perturbed:
            wrong = []
            for j in range(cfg.num_perturbed):  # another activity or another place
                if j % 2 == 0:
                    wrong.append(caption(p["name"], place, (act + 1 + j // 2) % len(ACTIVITIES)))
                else:
                    wrong.append(caption(p["name"], (place + 1 + j // 2) % len(PLACES), act))
            row.update(perturbed_captions=wrong, paraphrased_caption=paraphrase(p["name"], place, act),
                       perturbed_names=list(p["perturbed_names"]))
        rows.append(row)
    return rows


def _tofu_rows(p, cfg):
    return [{"image": None, "caption": None, "question": q.format(n=p["name"]),
             "answer": a.format(n=p["name"], v=p["facts"][k])} for k, q, a in FACTS[:cfg.num_facts]]


def generate(out: str | os.PathLike, seed: int = 0, cfg: ClearWorldConfig = ClearWorldConfig()) -> dict:
    """Writes <out>/<config>/train-00000-of-00001.parquet for every CLEAR config (atomically)."""

    world = build_world(cfg, seed)
    people = [p for p in world["people"] if not p["celebrity"]]
    celebs = [p for p in world["people"] if p["celebrity"]]
    img = {p["index"]: _image_rows(p, cfg, seed, 0, cfg.images_per_person, False) for p in people}
    pert = {p["index"]: _image_rows(p, cfg, seed, 100, cfg.eval_images, True) for p in people}
    tofu = {p["index"]: _tofu_rows(p, cfg) for p in people}

    order = forget_order(seed, len(people))  # nested forget sets
    splits = {pct: {people[i]["index"] for i in order[:split_size(len(people), pct)]} for pct in FORGET}
    everyone = [p["index"] for p in people]

    def cap_rows(ids):
        return [{**r, "question": None, "answer": None} for i in ids for r in img[i]]

    tables = {"full": [r for i in everyone for r in img[i]],
              "full+tofu": cap_rows(everyone) + [r for i in everyone for r in tofu[i]]}
    for pct in FORGET:
        f, rest = sorted(splits[pct]), [i for i in everyone if i not in splits[pct]]
        tables[f"forget{pct:02d}"] = [r for i in f for r in img[i]]
        tables[f"forget{pct:02d}+tofu"] = cap_rows(f) + [r for i in f for r in tofu[i]]
        tables[f"forget{pct:02d}_perturbed"] = [r for i in f for r in pert[i]]
        tables[f"retain{100 - pct}"] = [r for i in rest for r in img[i]]
        tables[f"retain{100 - pct}+tofu"] = cap_rows(rest) + [r for i in rest for r in tofu[i]]
    tables["retain_perturbed"] = [r for i in everyone if i not in splits[max(FORGET)] for r in pert[i]]
    tables["real_faces"] = []
    real_face_train = []
    for p in celebs:
        for k in range(cfg.real_face_images):
            rng = np.random.default_rng([seed, 4099, p["index"], k])
            row = {"image": {"bytes": _png(render_face(p["code"], cfg, rng)), "path": f"c{p['index']:04d}_{k}.png"},
                   "answer": p["name"], "options": list(p["perturbed_names"])}
            (tables["real_faces"] if k == 0 else real_face_train).append(row)
    tables["real_world"] = []
    wrng = np.random.default_rng([seed, 6151])
    for k in range(cfg.num_real_world):
        shape, colour = int(wrng.integers(len(WORLD_SHAPES))), int(wrng.integers(len(WORLD_COLOURS)))
        ask_shape = k % 2 == 0
        truth = WORLD_SHAPES[shape] if ask_shape else WORLD_COLOURS[colour][0]
        pool = list(WORLD_SHAPES) if ask_shape else [c for c, _ in WORLD_COLOURS]
        tables["real_world"].append({
            "image": {"bytes": _png(render_world(shape, colour, cfg, wrng)), "path": f"w{k:04d}.png"},
            "question": "What shape is the object in the image?" if ask_shape else
            "What colour is the object in the image?",
            "answer": truth, "options": [x for x in pool if x != truth][:cfg.num_perturbed]})
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".clear-", dir=out)
    try:
        for name, rows in tables.items():
            write_split(tmp, name, rows)
        names = list(tables)
        extra = {"real_faces_train": real_face_train}  # the celebrities' other images: pretraining data only
        for name, rows in extra.items():
            write_split(tmp, name, rows)
            names.append(name)
        if cfg.num_generic:

            gdir = os.path.join(tmp, GENERIC_DIR)
            os.makedirs(gdir)
            gfaces = _faces(np.random.default_rng([seed, 31337]), cfg.num_generic, cfg, world["faces"])
            captions = {}
            for j, code in enumerate(gfaces):
                for k in range(cfg.generic_images):
                    rng = np.random.default_rng([seed, 2053, j, k])
                    place, act = int(rng.integers(len(PLACES))), int(rng.integers(len(ACTIVITIES)))
                    fname = f"g{j:05d}_{k}.png"
                    with open(os.path.join(gdir, fname), "wb") as f:
                        f.write(_png(render_face(code, cfg, rng, place, act)))
                    captions[fname] = f"Someone is {ACTIVITIES[act][0]} in {PLACES[place][0]}."
            with open(os.path.join(gdir, CAPTIONS), "w") as f:
                json.dump(captions, f, indent=0)
            names.append(GENERIC_DIR)
        with open(os.path.join(tmp, "world.json"), "w") as f:
            json.dump({"benchmark": "clear", "seed": seed, "config": dataclasses.asdict(cfg),
                       "people": [{"name": p["name"], "code": p["code"].tolist(), "facts": p["facts"],
                                   "celebrity": p["celebrity"]} for p in world["people"]],
                       "forget": {str(k): sorted(v) for k, v in splits.items()}}, f, indent=1)
        publish(tmp, out, names + ["world.json"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return world


def benchmark_texts(out: str | os.PathLike) -> list[str]:
    """Every text of a generated CLEAR world (captions, names, questions, answers, options) for the tokenizer."""
    def encode(v):
        return [str(x) for x in v] if isinstance(v, list) else ([] if v is None else [str(v)])
    return parquet_texts(out, ("caption", "name", "question", "answer", "paraphrased_caption", "perturbed_captions",
                               "perturbed_names", "options"), encode)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(ClearWorldConfig):
        ap.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    cfg = ClearWorldConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(ClearWorldConfig)})
    generate(a.out, a.seed, cfg)
    print(f"wrote {a.out}: {cfg.num_people} people, {cfg.num_real_faces} celebrities")


if __name__ == "__main__":
    main()
