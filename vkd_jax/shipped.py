"""Published vanilla models of the embedded benchmarks, as MLLMU-Bench publishes its LLaVA_Vanilla.

Each folder of `vkd_jax/shipped_models/<name>/` is an HF LLaVA folder (config.json, model.safetensors, the
tokenizer, processor files) plus
  fingerprint.json   what made the model: the benchmark, the pipeline seed, every config field the vanilla model
                     depends on (VANILLA_FIELDS), a content digest of the generated world and its tokenizer; and a
                     sha256 of every file of the folder (a damaged or missing file is detected, never loaded)
  vanilla_metrics.json  the vanilla model's evaluation when it was built (the config's own protocol)
A run (`config.vanilla_model`: auto | shipped | train) whose fingerprint equals a shipped one starts from it instead
of training; `auto` trains when none matches or a folder is damaged (one line says why), `shipped` stops there.

    python -m vkd_jax.shipped --rebuild            # every entry of SHIPPED, from scratch (minutes each)
    python -m vkd_jax.shipped --rebuild mllmu_seed1 --workdir W   # one, reusing W's finished stages
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import logging

from vkd_jax.digests import file_sha256
from vkd_jax.errors import UserError

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped_models")
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> the config (variant) that makes it, relative to the repository
SHIPPED = {
    "mllmu_seed0": "configs/tiny.py:seed=0",
    "mllmu_seed1": "configs/tiny.py:seed=1",
    "mllmu_seed2": "configs/tiny.py:seed=2",
    "clear_seed0": "configs/tiny.py:benchmark=clear,seed=0",
}
# the config fields a vanilla model depends on (the rest of `data` minus NOT_VANILLA)
VANILLA_FIELDS = ("seed", "dtype", "param_dtype", "hf_dir", "model", "data", "optim", "partition.master_dtype",
                  "partition.frozen_dtype", "stages.pretrain", "stages.vanilla")
NOT_VANILLA = ("data.num_threads",)
FINGERPRINT, METRICS = "fingerprint.json", "vanilla_metrics.json"


class ShippedModelError(UserError):
    """config.vanilla_model='shipped' and no usable shipped model."""


def config_fields(cfg, fields, exclude=()) -> dict:
    """{dotted field: value} of `fields` (a section expands to its leaves), as JSON values (tuples as lists)."""
    c = json.loads(cfg.to_json_best_effort())
    out = {}

    def flat(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                flat(v, f"{key}.{k}")
        elif key not in exclude:
            out[key] = node

    for f in fields:
        node = c
        for part in f.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        flat(node, f)
    return out


# ---- content digests (what was generated, independent of the encoders' versions) ---------------------------

def _canonical(v, h) -> object:
    """A JSON-able value with every encoded image replaced by the sha256 of its decoded pixels."""
    if isinstance(v, dict):
        if "bytes" in v and isinstance(v["bytes"], (bytes, bytearray)):
            return {"pixels": _pixels_sha(bytes(v["bytes"]))}
        return {str(k): _canonical(x, h) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canonical(x, h) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return hashlib.sha256(v).hexdigest()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _pixels_sha(data: bytes) -> str:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def world_digest(raw_dir: str) -> str:
    """sha256 over a generated benchmark folder by content: every parquet table's rows (images as pixels), every
    image and JSON file beside them (parsed), so another pyarrow or PNG encoder gives the same digest."""
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(raw_dir)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = os.path.join(root, f)
            rel = os.path.relpath(path, raw_dir)
            h.update(rel.encode())
            if f.endswith(".parquet"):
                for row in pq.read_table(path).to_pylist():
                    h.update(json.dumps(_canonical(row, h), sort_keys=True).encode())
            elif f.endswith(".json"):
                with open(path) as fh:
                    h.update(json.dumps(json.load(fh), sort_keys=True).encode())
            else:  # an image
                with open(path, "rb") as fh:
                    h.update(_pixels_sha(fh.read()).encode())
    return h.hexdigest()


def tokenizer_digest(tokenizer_dir: str) -> str:
    """sha256 of what the tokenizer maps (vocabulary, merges, added tokens), not of its serialisation."""
    with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
        t = json.load(f)
    model = t.get("model", {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    added = sorted((a["id"], a["content"]) for a in t.get("added_tokens", []))
    blob = json.dumps({"vocab": model.get("vocab"), "merges": merges, "added": added}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint(cfg, bench) -> dict:
    """What makes a run's vanilla model: benchmark, seed, the config fields it reads, the world and tokenizer."""
    return {"benchmark": bench.name, "seed": int(cfg.seed),
            "config": config_fields(cfg, VANILLA_FIELDS, NOT_VANILLA),
            "world_digest": world_digest(bench.manual_dir) if bench.embedded else None,
            "tokenizer_digest": tokenizer_digest(bench.tokenizer_dir)}


def fingerprint_diff(have: dict, want: dict) -> list[str]:
    out = [f"{k}: {have.get(k)!r} (shipped) vs {want.get(k)!r} (config)" for k in
           ("benchmark", "seed", "world_digest", "tokenizer_digest") if have.get(k) != want.get(k)]
    hc, wc = have.get("config", {}), want.get("config", {})
    out += [f"config.{k}: {hc.get(k)!r} (shipped) vs {wc.get(k)!r} (config)" for k in sorted(set(hc) | set(wc))
            if hc.get(k) != wc.get(k)]
    return out


def check_files(folder: str, fp: dict) -> list[str]:
    """What is wrong with a shipped folder's files against its fingerprint's manifest (empty: intact)."""
    bad = []
    for name, sha in sorted((fp.get("files") or {}).items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            bad.append(f"{name} is missing")
        elif file_sha256(path) != sha:
            bad.append(f"{name} is damaged (sha256 differs from the fingerprint's)")
    if not fp.get("files"):
        bad.append(f"{FINGERPRINT} lists no files")
    return bad


def read_fingerprint(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, FINGERPRINT)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---- use in a run -------------------------------------------------------------------------------------------

def vanilla_from_shipped(cfg, bench, model_config, shipped_dir: str = SHIPPED_DIR) -> tuple[dict | None, str]:
    """(params, what happened) for `config.vanilla_model`: the shipped model whose fingerprint equals this run's,
    else (None, why not). Raises ShippedModelError when the config demands a shipped model and none is usable."""
    mode = str(cfg.vanilla_model)
    if mode == "train":
        return None, "config.vanilla_model='train': training the vanilla model"
    want = fingerprint(cfg, bench)
    why, candidates = [], []
    for name in sorted(os.listdir(shipped_dir)) if os.path.isdir(shipped_dir) else []:
        folder = os.path.join(shipped_dir, name)
        fp = read_fingerprint(folder)
        if fp is None:
            if os.path.isdir(folder):
                why.append(f"{folder}: no readable {FINGERPRINT}")
            continue
        if fp.get("benchmark") != want["benchmark"] or fp.get("seed") != want["seed"]:
            continue
        candidates.append(name)
        diff = fingerprint_diff(fp, want)
        if diff:
            why.append(f"{folder} was made by another config (" + "; ".join(diff[:6])
                       + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "") + ")")
            continue
        bad = check_files(folder, fp)
        if bad:
            why.append(f"{folder} is not usable: " + "; ".join(bad))
            continue
        from vkd_jax.models.hf_io import load_params_from_safetensors, weight_files

        _, params = load_params_from_safetensors(weight_files(folder), model_config)
        return params, f"vanilla model: the shipped {name} ({folder}), fingerprint {want['benchmark']} seed " \
                        f"{want['seed']} matched"
    if not candidates:
        why.append(f"no shipped vanilla model of {want['benchmark']} pipeline seed {want['seed']}")
    msg = "; ".join(why)
    if mode == "shipped":
        raise ShippedModelError(f"config.vanilla_model='shipped': {msg}")
    return None, f"training the vanilla model: {msg}"


# ---- building -----------------------------------------------------------------------------------------------

def build(name: str, workdir: str | None = None, shipped_dir: str = SHIPPED_DIR) -> dict:
    """Train (or reuse `workdir`'s finished stages of) SHIPPED[name]'s vanilla model, evaluate it, and write its
    folder atomically: the HF folder, fingerprint.json (with the files' sha256), vanilla_metrics.json."""
    from vkd_jax import run_eval, run_models, run_streams
    from vkd_jax.config_base import load_config
    from vkd_jax.config_check import validate
    from vkd_jax.io_utils import atomic_dir
    from vkd_jax.models.hf_io import save_hf_params

    cfg = load_config(os.path.join(REPO_DIR, SHIPPED[name]))
    cfg.vanilla_model = "train"
    validate(cfg)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix=f"vkd-ship-{name}-")
    try:
        bench = run_streams.prepare_data(cfg, workdir)
        mc = run_models.build_model_config(cfg, bench.tokenizer)
        params = run_models.vanilla_params(cfg, bench, workdir, mc)
        metrics = run_eval.evaluate_cached("vanilla", params, cfg, bench, mc, workdir)
        fp = {**fingerprint(cfg, bench), "config_spec": SHIPPED[name]}
        out = os.path.join(shipped_dir, name)
        with atomic_dir(out, overwrite=True) as tmp:
            save_hf_params(params, mc, tmp, template_hf_dir=bench.tokenizer_dir, overwrite=True)
            with open(os.path.join(tmp, METRICS), "w") as f:
                json.dump(metrics, f, indent=1, sort_keys=True)
            fp["files"] = {f: file_sha256(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
            with open(os.path.join(tmp, FINGERPRINT), "w") as f:
                json.dump(fp, f, indent=1, sort_keys=True)
        return fp
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", nargs="*", metavar="NAME", required=True,
                    help=f"the models to rebuild (default: all of {', '.join(SHIPPED)})")
    ap.add_argument("--workdir", default=None, help="reuse this shared work directory's finished stages")
    a = ap.parse_args(argv)
    names = a.rebuild or list(SHIPPED)
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        print(f"error: unknown shipped models {unknown} (known: {', '.join(SHIPPED)})", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)
    for n in names:
        fp = build(n, a.workdir if len(names) == 1 else None)
        print(f"{n}: {os.path.join(SHIPPED_DIR, n)} ({fp['benchmark']} seed {fp['seed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
