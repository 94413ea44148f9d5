"""Unlearning train-step time: VKD (LLM frozen) vs full-model GA/GD vs LoRA, and ours vs a PyTorch reference step.

  python bench/step.py [--batch 2] [--repeats 3] [--write bench/RESULTS.md]

Same ~50M model as bench/forward.py, one forget and one retain VQA batch of `batch` rows each (256 image tokens +
32 text tokens). Steps (all AdamW, clip 1.0):
  vkd      visual preset (ViT + projector train, LLM frozen): bounded GA on forget + 10 x projector MSE on retain
  gd_full  every param trains: -NLL(forget) + NLL(retain)         (the "full-model GA" baseline, same data)
  ga_full  every param trains: -NLL(forget) only
  gd_lora  LoRA r=16 on the LLM's linear layers: -NLL(forget) + NLL(retain)
PyTorch reference (transformers LLaVA, same weights): gd_full and vkd written the usual way (requires_grad=False on
the LLM, a frozen teacher copy of the visual side), eager and torch.compile. FLOP/s: XLA's cost analysis of our
compiled step (all ops) against the measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import append_section, machine, matmul_peak_flops, median_time  # noqa: E402
from bench.forward import MODEL_50M, TEXT_LEN  # noqa: E402


def batches(c, batch, seed=0):
    rng = np.random.default_rng(seed)

    def one():
        text = rng.integers(4, c.text.vocab_size - 1, size=(batch, TEXT_LEN))
        ids = np.concatenate([text[:, :2], np.full((batch, c.image_seq_length), c.image_token_index), text[:, 2:]], 1)
        lm = np.zeros(ids.shape, np.float32)
        lm[:, -8:] = 1
        return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
                "positions": np.tile(np.arange(ids.shape[1], dtype=np.int32), (batch, 1)),
                "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(batch, bool),
                "pixel_values": rng.standard_normal((batch, 3, c.vision.image_size, c.vision.image_size)
                                                    ).astype(np.float32)}
    return {"forget": one(), "retain": one()}


def ours(model, name, method, preset, batch, repeats):
    import ml_collections
    from vkd_jax.models.hf_io import flat_params
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.train import Trainer

    pc = ml_collections.ConfigDict(dict(preset=preset, vit_last_k=0, num_vit_layers=model.config.vision.num_hidden_layers,
                                        lora=dict(rank=16, alpha=16.0, dropout=0.0), frozen_dtype=""))
    oc = ml_collections.ConfigDict(dict(lr=1e-5, schedule="constant", clip_norm=1.0))
    mcfg = ml_collections.ConfigDict(dict(taps=("projector",), a_f=1.0, ga_bound=5.0, b_r=10.0)) \
        if method == "vkd" else None
    tr = Trainer(model.config, flat_params(model), make_method(method, mcfg), partition_cfg=pc, optim_cfg=oc,
                 num_steps=1000)
    t0 = time.perf_counter()
    tr.step(batch)["loss"].block_until_ready()
    compile_s = time.perf_counter() - t0
    b = tr.prepare(batch)
    fn = tr.compiled_step(b)
    cost = fn.lower(tr.state, b, tr.frozen, tr.aux).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    t = median_time(lambda: tr.step(batch)["loss"].block_until_ready(), repeats, warmup=1)
    n_train = sum(int(np.prod(v.shape)) for v in tr.state["trainable"].values())
    return dict(name=name, impl="ours (jit)", time=t, flops=flops, compile=compile_s, trainable=n_train)


def torch_steps(hf, batch, kind, compiled, repeats):
    import torch
    import torch.nn.functional as F

    hf = copy.deepcopy(hf).train()
    tb = {k: {n: torch.tensor(v.astype(np.int64) if v.dtype == np.int32 else v) for n, v in s.items()}
          for k, s in batch.items()}
    for s in tb.values():
        s["tlabels"] = torch.where(s["loss_mask"] > 0, s["input_ids"], torch.tensor(-100))

    def nll(out, s, bound=None):
        logits = out.logits[:, :-1].float()
        lab = s["tlabels"][:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100,
                             reduction="none")
        m = (lab.reshape(-1) != -100).float()
        if bound is not None:
            ce = torch.clamp(ce, max=bound)
        return (ce * m).sum() / m.sum()

    if kind == "vkd":
        for p in hf.model.language_model.parameters():
            p.requires_grad_(False)
        for p in hf.lm_head.parameters():
            p.requires_grad_(False)
        teacher = copy.deepcopy(hf).eval()

        def feats(m, px):
            out = m.model.get_image_features(pixel_values=px)
            out = getattr(out, "pooler_output", out)
            return torch.cat(list(out), 0) if isinstance(out, (list, tuple)) else out

        def loss_fn():
            f, r = tb["forget"], tb["retain"]
            lf = nll(hf(input_ids=f["input_ids"], pixel_values=f["pixel_values"], attention_mask=f["attention_mask"]),
                     f, 5.0)
            with torch.no_grad():
                t = feats(teacher, r["pixel_values"])
            return -lf + 10 * F.mse_loss(feats(hf, r["pixel_values"]), t)
    else:
        def loss_fn():
            f, r = tb["forget"], tb["retain"]
            lf = nll(hf(input_ids=f["input_ids"], pixel_values=f["pixel_values"], attention_mask=f["attention_mask"]), f)
            lr = nll(hf(input_ids=r["input_ids"], pixel_values=r["pixel_values"], attention_mask=r["attention_mask"]), r)
            return -lf + lr
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss
    fn = torch.compile(step) if compiled else step
    t0 = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - t0
    t = median_time(fn, repeats, warmup=1)
    return dict(name=kind if kind == "vkd" else "gd_full", impl="torch compile" if compiled else "torch eager",
                time=t, compile=compile_s, flops=0.0, trainable=sum(p.numel() for p in params))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--write", default=None)
    a = p.parse_args()
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    import vkd_jax
    torch.set_num_threads(os.cpu_count())
    peak = matmul_peak_flops()
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(LlavaConfig(**MODEL_50M))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = vkd_jax.load_hf(d)
    batch = batches(model.config, a.batch)
    rows = []
    for name, method, preset in (("vkd", "vkd", "visual"), ("gd_full", "gd", "full"), ("ga_full", "ga", "full"),
                                 ("gd_lora", "gd", "lora_llm")):
        rows.append(ours(model, name, method, preset, batch, a.repeats))
        print(rows[-1], flush=True)
    flops_by = {r["name"]: r["flops"] for r in rows}
    for kind in ("gd_full", "vkd"):
        for compiled in ((False,) if a.no_compile else (False, True)):
            try:
                r = torch_steps(hf, batch, kind, compiled, a.repeats)
                r["flops"] = flops_by[r["name"]]
                rows.append(r)
            except Exception as e:  # noqa: BLE001  torch.compile may be unavailable on this machine
                rows.append(dict(name=kind, impl=("torch compile" if compiled else "torch eager"), time=float("nan"),
                                 compile=0.0, flops=0.0, trainable=0, error=f"{type(e).__name__}: {str(e)[:120]}"))
            print(rows[-1], flush=True)
    t = {(r["name"], r["impl"]): r["time"] for r in rows}
    lines = [f"Machine: {machine()}. ~50M LLaVA of bench/forward.py; batch {a.batch} forget + {a.batch} retain VQA "
             f"rows, {model.config.image_seq_length} image + {TEXT_LEN} text tokens; AdamW, clip 1.0. Median of "
             f"{a.repeats} steps after warm-up. fp32 matmul peak {peak['peak'] / 1e9:.1f} GFLOP/s "
             f"(XLA {peak['xla'] / 1e9:.1f}, torch {peak.get('torch', 0) / 1e9:.1f}). FLOP/s from XLA's cost "
             f"analysis of our compiled step (torch rows: the same count for the same math).", "",
             "| step | impl | trainable params | time (ms) | compile (s) | GFLOP/s | % of peak |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gf = r["flops"] / r["time"] / 1e9 if r["time"] == r["time"] and r["flops"] else float("nan")
        extra = f" ({r['error']})" if "error" in r else ""
        lines.append(f"| {r['name']} | {r['impl']}{extra} | {r['trainable'] / 1e6:.1f}M | {1e3 * r['time']:.0f} | "
                     f"{r['compile']:.1f} | {gf:.1f} | {100 * gf / (peak['peak'] / 1e9):.0f}% |")
    vkd, gd = t[("vkd", "ours (jit)")], t[("gd_full", "ours (jit)")]
    lines += ["", f"VKD / full-model GD step time (ours): {vkd / gd:.2f} (target <= 0.5); VKD / full-model GA: "
              f"{vkd / t[('ga_full', 'ours (jit)')]:.2f}."]
    for kind in ("gd_full", "vkd"):
        best = min((v for (n, impl), v in t.items() if n == kind and impl.startswith("torch") and v == v),
                   default=float("nan"))
        lines.append(f"{kind}: best torch / ours = {best / t[(kind, 'ours (jit)')]:.2f} (target >= 1).")
    body = "\n".join(lines)
    print(body)
    if a.write:
        append_section(a.write, "Train step (issue 4)", body)


if __name__ == "__main__":
    main()
