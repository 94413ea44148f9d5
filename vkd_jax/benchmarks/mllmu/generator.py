"""The embedded benchmark: an MLLMU-Bench-shaped world, written as the real parquet layout, deterministic from a seed.

    python -m vkd_jax.benchmarks.mllmu.generator --out DIR --seed 0 [--num_people 160 ...]

Visual identity is a combination, not a single cue: a background drawn from a few close colours, and `num_shapes`
shapes, each with a kind (6), a colour from a palette of similar hues (6) and a slot in a 3x3 grid; any two people
differ in at least `min_code_distance` of these attributes, so no single attribute (the background in particular)
identifies a person. Poses: rotation, scale, shift, brightness, contrast jitter and noise; the Full_Set image is the
canonical pose, ft_Data has `ft_poses` rows per person (pose 0 first), Test_Set `images` are `test_poses` new poses.
Celebrities (Retain_Set) are a separate population with their own faces and facts.
With `num_generic` > 0, `generic_images/` holds `generic_poses` images of each of that many further people who are
in no split and have no facts: the non-evaluation images an unlearning method may use to keep the visual side as it
was (VKD's `b_g` term; a real run points `data.generic_images` at a folder of ordinary photos instead), with
`captions.json` describing each one's appearance (the caption stream that pretrains the tiny vision tower, as CLIP
comes pretrained in LLaVA). They are drawn after everything else, from their own generator, so adding them changes
nothing else in the world.
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
from vkd_jax.errors import ConfigError

FACTS = ("birthplace", "occupation", "hobby", "pet", "favourite food", "instrument")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
# deliberately close colours: identity needs the combination, not a colour
PALETTE = ((200, 70, 60), (215, 120, 50), (190, 160, 60), (170, 80, 120), (140, 90, 70), (205, 100, 100))
BACKGROUNDS = ((70, 80, 95), (80, 85, 90), (65, 90, 85), (85, 75, 90))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    num_people: int = 160          # Full_Set profiles; forget_5/10/15 take 5/10/15 % of them
    num_celebrities: int = 40      # Retain_Set population
    num_facts: int = 5             # facts per profile, from FACTS
    values_per_fact: int = 12
    image_size: int = 32
    num_shapes: int = 3
    min_code_distance: int = 3     # attributes (background + kind/colour/slot per shape) two people differ in
    ft_poses: int = 4              # ft_Data rows per person (pose 0 = the Full_Set image)
    test_poses: int = 2            # Test_Set new poses per person
    max_rotation: float = 20.0     # degrees
    max_scale: float = 0.15
    max_shift: float = 0.08        # fraction of the image size
    max_brightness: float = 0.2
    noise_std: float = 6.0         # uint8 units
    image_format: str = "PNG"      # PNG or JPEG
    num_generic: int = 0           # further people in no split: generic_images/, for retain-side distillation
    generic_poses: int = 4         # images per generic person (random poses)


def _codes(rng, n, cfg: WorldConfig, taken: np.ndarray | None = None) -> np.ndarray:
    """[n, 1 + 3*num_shapes]: background, then (kind, colour, slot) per shape; slots distinct within a person;
    any two codes (and any code and a row of `taken`) differ in at least min_code_distance attributes."""
    old = [] if taken is None else list(taken)
    codes: list[np.ndarray] = []
    while len(codes) < n:
        slots = rng.choice(9, cfg.num_shapes, replace=False)
        c = [rng.integers(len(BACKGROUNDS))]
        for s in range(cfg.num_shapes):
            c += [rng.integers(len(SHAPES)), rng.integers(len(PALETTE)), slots[s]]
        c = np.asarray(c)
        if all((c != o).sum() >= cfg.min_code_distance for o in old + codes):
            codes.append(c)
    return np.stack(codes)


def render(code, cfg: WorldConfig, pose_rng: np.random.Generator | None = None) -> Image.Image:
    """One image of the person with `code`; pose_rng=None is the canonical pose."""
    ss = 4  # supersampling: soft, anti-aliased edges
    big = cfg.image_size * ss
    im = Image.new("RGB", (big, big), BACKGROUNDS[code[0]])
    d = ImageDraw.Draw(im)
    cell = big / 3
    r = cell * 0.36
    for s in range(cfg.num_shapes):
        kind, col, slot = code[1 + 3 * s: 4 + 3 * s]
        cx, cy = (slot % 3 + 0.5) * cell, (slot // 3 + 0.5) * cell
        col = PALETTE[col]
        box = (cx - r, cy - r, cx + r, cy + r)
        name = SHAPES[kind]
        if name == "circle":
            d.ellipse(box, fill=col)
        elif name == "square":
            d.rectangle(box, fill=col)
        elif name == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
        elif name == "cross":
            w = r * 0.35
            d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=col)
            d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=col)
        elif name == "ring":
            d.ellipse(box, outline=col, width=max(1, int(r * 0.4)))
        else:  # bar
            d.rectangle((cx - r, cy - r * 0.3, cx + r, cy + r * 0.3), fill=col)
    if pose_rng is not None:
        angle = pose_rng.uniform(-cfg.max_rotation, cfg.max_rotation)
        scale = 1 + pose_rng.uniform(-cfg.max_scale, cfg.max_scale)
        tx, ty = pose_rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * big
        a, c = np.cos(np.radians(angle)) / scale, np.sin(np.radians(angle)) / scale
        cx = cy = big / 2  # inverse affine about the centre (PIL maps output -> input)
        coeffs = (a, c, cx - a * (cx + tx) - c * (cy + ty), -c, a, cy + c * (cx + tx) - a * (cy + ty))
        im = im.transform(im.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=BACKGROUNDS[code[0]])
    im = im.resize((cfg.image_size, cfg.image_size), Image.LANCZOS)
    if pose_rng is not None:
        im = ImageEnhance.Brightness(im).enhance(1 + pose_rng.uniform(-cfg.max_brightness, cfg.max_brightness))
        arr = np.asarray(im, np.float32) + pose_rng.normal(0, cfg.noise_std, (cfg.image_size, cfg.image_size, 3))
        im = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return im


def _encode(im: Image.Image, cfg: WorldConfig) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=cfg.image_format, **({"quality": 90} if cfg.image_format == "JPEG" else {}))
    return buf.getvalue()


def _appearance(code, cfg) -> str:
    parts = [f"a {SHAPES[code[1 + 3 * s]]} in tone {code[2 + 3 * s]} at slot {code[3 + 3 * s]}"
             for s in range(cfg.num_shapes)]
    return f"background tone {code[0]}; " + ", ".join(parts)


def _tasks(rng, name, facts: dict, values: dict) -> dict:
    """Classification (4 options, VQA + QA), generation and cloze questions for one profile, one per fact."""
    it_q, pt_q, gen, cloze = [], [], [], []
    for fact, val in facts.items():
        others = [v for v in values[fact] if v != val]
        opts = [val] + list(rng.choice(others, 3, replace=False))
        order = rng.permutation(4)
        options = {L: str(opts[j]) for L, j in zip("ABCD", order)}
        letter = "ABCD"[int(np.where(order == 0)[0][0])]
        it_q.append({"Question": f"What is the {fact} of the person in the image?", "Options": options,
                     "Correct_Answer": letter})
        pt_q.append({"Question": f"What is the {fact} of {name}?", "Options": dict(options), "Correct_Answer": letter})
        gen.append({"Question": f"What is the {fact} of the person in the image?",
                    "Ground_Truth": f"The {fact} of this person is {val}.", "Type": "Image_Textual"})
        gen.append({"Question": f"What is the {fact} of {name}?",
                    "Ground_Truth": f"The {fact} of {name} is {val}.", "Type": "Pure_Text"})
        cloze.append({"Question": f"The {fact} of the person in the image is __.", "Ground_Truth": val,
                      "Type": "Image_Textual"})
        cloze.append({"Question": f"The {fact} of {name} is __.", "Ground_Truth": val, "Type": "Pure_Text"})
    return {"Classification_Task": {"Image_Textual_Questions": it_q, "Pure_Text_Questions": pt_q},
            "Generation_Task": gen, "Mask_Task": cloze}


def _ft_pairs(name, facts) -> list[dict]:
    """ft_Data `metadata`: Q/A pairs; `Type` (our addition; the real set has none and means Image_Textual)
    marks the name-based ones that train text-only knowledge."""
    pairs = [{"Question": "Who is the person in the image?", "Answer": f"This is {name}.", "Type": "Image_Textual"}]
    for fact, val in facts.items():
        pairs.append({"Question": f"What is the {fact} of the person in the image?",
                      "Answer": f"The {fact} of this person is {val}.", "Type": "Image_Textual"})
        pairs.append({"Question": f"What is the {fact} of {name}?", "Answer": f"The {fact} of {name} is {val}.",
                      "Type": "Pure_Text"})
    return pairs


def build_world(cfg: WorldConfig, seed: int) -> dict:
    """All profiles (people + celebrities) with codes, names, facts and tasks; no images yet."""
    if cfg.num_facts > len(FACTS):
        raise ConfigError(f"num_facts={cfg.num_facts} > {len(FACTS)} known facts")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    facts_used = FACTS[:cfg.num_facts]
    values = {f: unique_words(rng, cfg.values_per_fact, 2, taken) for f in facts_used}
    n_all = cfg.num_people + cfg.num_celebrities
    codes = _codes(rng, n_all, cfg)
    firsts = unique_words(rng, n_all, 2, taken)
    lasts = unique_words(rng, n_all, 3, taken)
    people = []
    for i in range(n_all):
        celeb = i >= cfg.num_people
        name = f"{firsts[i].capitalize()} {lasts[i].capitalize()}"
        facts = {f: values[f][rng.integers(cfg.values_per_fact)] for f in facts_used}
        pid = f"celeb_{i - cfg.num_people:04d}" if celeb else f"{i:04d}"
        bio = {"Name": name, **{f.replace(" ", "_").capitalize(): v for f, v in facts.items()},
               "appearance_detail": _appearance(codes[i], cfg)}
        people.append({"ID": pid, "name": name, "facts": facts, "code": codes[i], "celebrity": celeb,
                       "biography": json.dumps(bio), **_tasks(rng, name, facts, values), "ft": _ft_pairs(name, facts)})
    return {"people": people, "values": values, "config": cfg, "seed": seed}


def generic_codes(world: dict) -> np.ndarray:
    """[num_generic, code]: people outside every split, drawn after the world from their own generator and at
    least min_code_distance from every profile and celebrity."""
    cfg = world["config"]
    if cfg.num_generic <= 0:
        return np.zeros((0, 1 + 3 * cfg.num_shapes), np.int64)
    taken = np.stack([p["code"] for p in world["people"]])
    return _codes(np.random.default_rng([world["seed"], 31337]), cfg.num_generic, cfg, taken)


def _pose_rng(seed, person, pose):
    return np.random.default_rng([seed, 7919, person, pose])


def _row(p, img, cfg, image_col="image"):
    row = {"ID": p["ID"], "Directory": f"synthetic/{p['ID']}", "biography": p["biography"],
           "question": "Who is the person in the image?", "answer": f"This is {p['name']}.",
           "Classification_Task": p["Classification_Task"], "Generation_Task": p["Generation_Task"],
           "Mask_Task": p["Mask_Task"]}
    row[image_col] = img
    return row


def generate(out: str | os.PathLike, seed: int = 0, cfg: WorldConfig = WorldConfig()) -> dict:
    """Writes <out>/<config>/train-00000-of-00001.parquet for every MLLMU-Bench config (atomically)."""
    world = build_world(cfg, seed)
    people = [p for p in world["people"] if not p["celebrity"]]
    celebs = [p for p in world["people"] if p["celebrity"]]

    def img(i, p, pose):
        im = render(p["code"], cfg, None if pose == 0 else _pose_rng(seed, i, pose))
        return {"bytes": _encode(im, cfg), "path": f"{p['ID']}_pose{pose}.{cfg.image_format.lower()}"}

    all_idx = {p["ID"]: i for i, p in enumerate(world["people"])}
    canon = {p["ID"]: img(all_idx[p["ID"]], p, 0) for p in world["people"]}
    tables = {"Full_Set": [_row(p, canon[p["ID"]], cfg) for p in people],
              "Retain_Set": [_row(p, canon[p["ID"]], cfg) for p in celebs]}
    tables["Test_Set"] = [
        _row(p, [img(all_idx[p["ID"]], p, cfg.ft_poses + k) for k in range(cfg.test_poses)], cfg, "images")
        for p in people]
    tables["ft_Data"] = [{"image": canon[p["ID"]] if k == 0 else img(all_idx[p["ID"]], p, k), "ID": p["ID"],
                          "metadata": json.dumps(p["ft"])} for k in range(cfg.ft_poses) for p in people]
    order = forget_order(seed, len(people))  # nested forget sets, as the real ones
    for pct in (5, 10, 15):
        forget = set(order[:split_size(len(people), pct)].tolist())
        tables[f"forget_{pct}"] = [r for i, r in enumerate(tables["Full_Set"]) if i in forget]
        tables[f"retain_{100 - pct}"] = [r for i, r in enumerate(tables["Full_Set"]) if i not in forget]
    generic = generic_codes(world)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=out)
    try:
        for name, rows in tables.items():
            write_split(tmp, name, rows)
        names = list(tables)
        if len(generic):
            os.makedirs(os.path.join(tmp, GENERIC_DIR))
            n_all, captions = len(world["people"]), {}
            for j, code in enumerate(generic):
                for k in range(cfg.generic_poses):
                    name = f"g{j:05d}_{k}.{cfg.image_format.lower()}"
                    with open(os.path.join(tmp, GENERIC_DIR, name), "wb") as f:
                        f.write(_encode(render(code, cfg, _pose_rng(seed, n_all + j, k)), cfg))
                    captions[name] = _appearance(code, cfg)
            with open(os.path.join(tmp, GENERIC_DIR, CAPTIONS), "w") as f:
                json.dump(captions, f, indent=0)
            names.append(GENERIC_DIR)
        with open(os.path.join(tmp, "world.json"), "w") as f:
            json.dump({"seed": seed, "config": dataclasses.asdict(cfg), "values": world["values"],
                       "people": [{"ID": p["ID"], "name": p["name"], "facts": p["facts"],
                                   "code": p["code"].tolist()} for p in world["people"]],
                       "generic_codes": generic.tolist()}, f, indent=1)
        publish(tmp, out, names + ["world.json"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return world


def benchmark_texts(out: str | os.PathLike) -> list[str]:
    """Every text of a generated benchmark (questions, options, answers, names, biographies) for the tokenizer."""
    return parquet_texts(out, ("biography", "question", "answer", "Classification_Task", "Generation_Task",
                               "Mask_Task", "metadata"),
                         lambda v: [v if isinstance(v, str) else json.dumps(v)])


def tokenizer_texts(out: str | os.PathLike) -> list[str]:
    """What the embedded world's tokenizer trains on: its texts, then MLLMU-Bench's prompt words."""
    from vkd_jax.benchmarks.worlds import prompt_texts

    return benchmark_texts(out) + prompt_texts()


def identity_nn_accuracy(world: dict, poses: int = 2, size: int = 16) -> float:
    """Sanity check that identity is visual and survives poses: 1-NN (L2 on size x size grey-free RGB) of new
    poses against the canonical images of all people. Chance is 1/num_people."""
    cfg = world["config"]
    people = world["people"]

    def vec(im):
        return np.asarray(im.resize((size, size), Image.BILINEAR), np.float32).ravel()
    gallery = np.stack([vec(render(p["code"], cfg)) for p in people])
    hits = n = 0
    for i, p in enumerate(people):
        for k in range(poses):
            q = vec(render(p["code"], cfg, _pose_rng(world["seed"], i, 100 + k)))
            hits += int(np.argmin(((gallery - q) ** 2).sum(1)) == i)
            n += 1
    return hits / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer_dir", default=None, help="default: <out>/tokenizer")
    for f in dataclasses.fields(WorldConfig):
        ap.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    cfg = WorldConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(WorldConfig)})
    world = generate(a.out, a.seed, cfg)
    from vkd_jax.data.tokenizer import train_tokenizer
    tok_dir = a.tokenizer_dir or os.path.join(a.out, "tokenizer")
    tok = train_tokenizer(tokenizer_texts(a.out), tok_dir)
    print(f"wrote {a.out}: {cfg.num_people} people, {cfg.num_celebrities} celebrities; tokenizer "
          f"({tok.vocab_size} tokens) in {tok_dir}; 1-NN identity accuracy across poses "
          f"{identity_nn_accuracy(world):.3f} (chance {1 / len(world['people']):.3f})")


if __name__ == "__main__":
    main()
