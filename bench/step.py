"""Unlearning train-step time: VKD (LLM frozen) vs full-model GA/GD vs LoRA, and ours vs a PyTorch reference step.

  python bench/step.py [--batch 2] [--repeats 5] [--no_compile] [--write bench/RESULTS.md] [--config ...]

Same ~50M model as bench/forward.py, one forget and one retain VQA batch of `batch` rows each (256 image tokens +
32 text tokens). Steps (all AdamW, clip 1.0):
  vkd            visual preset (ViT + projector train, LLM frozen): bounded GA on forget + 10 x projector MSE on
                 retain (the configs' default)
  vkd_projector  the same loss, projector-only preset
  gd_full        every param trains: -NLL(forget) + NLL(retain)
  ga_full        every param trains: -NLL(forget rows + retain rows), i.e. full-model GA on the same data
  gd_lora        LoRA r=16 on the LLM's linear layers: -NLL(forget) + NLL(retain)
PyTorch reference (transformers LLaVA, same weights): gd_full and vkd written the usual way (requires_grad=False on
the LLM, a frozen teacher copy of the visual side), eager and torch.compile. FLOP/s: matmul FLOPs counted from the
shapes in our step's jaxpr, against the measured fp32 matmul peak.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import append_section, machine, matmul_peak_runners, peak_of  # noqa: E402
from bench.forward import MODEL_50M, TEXT_LEN  # noqa: E402
from vkd_jax.flops import dot_flops  # noqa: E402


def batches(c, batch, seed=0, text_len=TEXT_LEN, answer=8):
    rng = np.random.default_rng(seed)

    def one():
        text = rng.integers(4, min(c.text.vocab_size, c.image_token_index) - 1, size=(batch, text_len))
        ids = np.concatenate([text[:, :2], np.full((batch, c.image_seq_length), c.image_token_index), text[:, 2:]], 1)
        lm = np.zeros(ids.shape, np.float32)
        lm[:, -answer:] = 1
        return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
                "positions": np.tile(np.arange(ids.shape[1], dtype=np.int32), (batch, 1)),
                "labels": np.where(lm > 0, ids, 0).astype(np.int32), "loss_mask": lm, "valid": np.ones(batch, bool),
                "pixel_values": rng.standard_normal((batch, 3, c.vision.image_size, c.vision.image_size)
                                                    ).astype(np.float32)}
    return {"forget": one(), "retain": one()}


def frozen_weight_grad_dots(jaxpr, shapes: set) -> int:
    """dot_generals whose output has the shape of a frozen weight (a weight-gradient matmul); recursive."""
    import jax
    n = 0
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general" and tuple(e.outvars[0].aval.shape) in shapes:
            n += 1
        for v in e.params.values():
            for x in (v if isinstance(v, (list, tuple)) else (v,)):
                if isinstance(x, jax.extend.core.ClosedJaxpr):
                    n += frozen_weight_grad_dots(x.jaxpr, shapes)
                elif isinstance(x, jax.extend.core.Jaxpr):
                    n += frozen_weight_grad_dots(x, shapes)
    return n


def step_configs(method, preset, num_vit_layers, frozen_dtype=""):
    """(method section, partition section, optimiser section) of the measured step: the config base's and the
    method registry's, with this bench's own choices (vit_last_k 0, LoRA without dropout, a small constant learning
    rate)."""
    from vkd_jax.config_base import base
    from vkd_jax.unlearn import stages
    from vkd_jax.unlearn.methods import method_config

    c = base()
    pc = c.partition
    pc.update(dict(preset=preset, vit_last_k=0, num_vit_layers=num_vit_layers, frozen_dtype=frozen_dtype))
    pc.lora.dropout = 0.0
    oc = stages.optim_cfg(c, c.stages.unlearn)
    oc.lr = 1e-5
    mcfg = method_config("vkd", taps=("projector",), a_f=1.0, ga_bound=5.0, b_r=10.0) if method == "vkd" else None
    return mcfg, pc, oc


def ours(model, name, method, preset, batch, frozen_dtype=""):
    """Build the trainer, compile its step, count its FLOPs; returns (row, step callable)."""
    import jax

    from vkd_jax.models.hf_io import flat_params
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.train import Trainer

    mcfg, pc, oc = step_configs(method, preset, model.config.vision.num_hidden_layers, frozen_dtype)
    if method == "ga":  # full-model GA on the same data: every forget and retain row ascended
        batch = {"forget": {k: np.concatenate([batch["forget"][k], batch["retain"][k]]) for k in batch["forget"]}}
    tr = Trainer(model.config, flat_params(model), make_method(method, mcfg), partition_cfg=pc, optim_cfg=oc,
                 num_steps=1000)
    t0 = time.perf_counter()
    tr.step(batch)["loss"].block_until_ready()
    compile_s = time.perf_counter() - t0
    b = tr.prepare(batch)
    jaxpr = jax.make_jaxpr(tr.built.step)(tr.state, b, tr.frozen, tr.aux).jaxpr
    train_shapes = {tuple(v.shape) for v in tr.state.trainable.values()}
    frozen_shapes = {tuple(v.shape) for v in tr.frozen.values() if v.ndim == 2} - train_shapes
    n_train = sum(int(np.prod(v.shape)) for v in tr.state.trainable.values())
    row = dict(name=name, impl="ours (jit)", flops=dot_flops(jaxpr), compile=compile_s, trainable=n_train,
               wgrad=frozen_weight_grad_dots(jaxpr, frozen_shapes | {s[::-1] for s in frozen_shapes}),
               times=[])
    return row, lambda: tr.step(batch)["loss"].block_until_ready()


def step_flops_abstract(model_config, batch, method, preset, frozen_dtype="") -> float:
    """jaxpr FLOPs of one train step from shapes alone (the engine's built step on abstract params, nothing
    allocated): used for the LLaVA-1.5-7B projection, where running the step on this machine is out of reach."""
    import jax

    from vkd_jax.unlearn import partition as pt
    from vkd_jax.unlearn.methods import make_method
    from vkd_jax.unlearn.step import build_step
    from vkd_jax.unlearn.train import prepare_batch

    mcfg, pc, oc = step_configs(method, preset, model_config.vision.num_hidden_layers, frozen_dtype)
    m = make_method(method, mcfg)
    if method == "ga":
        batch = {"forget": {k: np.concatenate([batch["forget"][k], batch["retain"][k]]) for k in batch["forget"]}}
    built = build_step(model_config, m, partition_cfg=pc, optim_cfg=oc, num_steps=10,
                       mesh=pt.make_mesh(None, jax.devices()[:1]))
    b = {s: prepare_batch(v) for s, v in batch.items() if s in m.streams}
    return dot_flops(jax.make_jaxpr(built.step)(built.abstract_state, b, built.abstract_frozen,
                                                built.abstract_aux).jaxpr)


def llava7b_projection(cfg, text_len=64, answer=16) -> list[str]:
    """VKD / full-model FLOP ratios for the config's model (LLaVA-1.5-7B: 576 image tokens, `text_len` text
    tokens)."""
    from vkd_jax.models.config import config_from_model_dict

    mc = config_from_model_dict(cfg.model.to_dict(), dtype="float32", param_dtype="float32")
    b = batches(mc, 1, text_len=text_len, answer=answer)
    f = {n: step_flops_abstract(mc, b, m, p) for n, m, p in (("vkd", "vkd", "visual"),
                                                              ("vkd_projector", "vkd", "projector"),
                                                              ("gd_full", "gd", "full"), ("ga_full", "ga", "full"))}
    return [f"- LLaVA-1.5-7B shapes (1 forget + 1 retain row, {mc.image_seq_length} image + {text_len} text tokens, "
            f"{answer}-token answers; jaxpr FLOPs from abstract shapes, nothing run): step TFLOP "
            + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in f.items())
            + f"; vkd / gd_full {f['vkd'] / f['gd_full']:.2f}, vkd / ga_full {f['vkd'] / f['ga_full']:.2f}, "
              f"vkd_projector / gd_full {f['vkd_projector'] / f['gd_full']:.2f}"]


def torch_steps(hf, batch, kind, compiled, compile_timeout=600):
    """The PyTorch reference step written the usual way; compiled: torch.compile (inductor) of the loss forward
    (AOTAutograd compiles its backward too), optimizer eager. Returns (row, step callable)."""
    import signal

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
            def run(s):
                return hf(input_ids=s["input_ids"], pixel_values=s["pixel_values"], attention_mask=s["attention_mask"])
            lf, lr = nll(run(f), f), nll(run(r), r)
            return -lf + lr
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    loss_c = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_c()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    def alarm(*_):
        raise TimeoutError(f"torch.compile did not finish the first step within {compile_timeout} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(compile_timeout if compiled else 0)
    try:
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    row = dict(name=kind if kind == "vkd" else "gd_full", impl="torch compile" if compiled else "torch eager",
               compile=compile_s, flops=0.0, trainable=sum(p.numel() for p in params), times=[])
    return row, step


def define_flags() -> None:
    """The CLI's flags (defined only when it runs: other benches import this module)."""
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "llava7b.py"),
                                    "the config whose model the FLOP projection uses (path[:variant])",
                                    lock_config=False)
    flags.DEFINE_integer("batch", 2, "forget rows (and as many retain rows) per step")
    flags.DEFINE_integer("repeats", 5, "timed rounds (after one warm-up round)")
    flags.DEFINE_bool("no_compile", False, "skip torch.compile")
    flags.DEFINE_bool("no_torch", False, "skip the PyTorch reference")
    flags.DEFINE_integer("compile_timeout", 600, "seconds torch.compile may take for its first step")
    flags.DEFINE_string("write", None, "results file to update (section 'Train step (issue 4)')")
    flags.DEFINE_bool("projection_only", False, "print the FLOP projection of the config's model only")


def main(argv):
    del argv
    a = flags.FLAGS
    if a.projection_only:
        print("\n".join(llava7b_projection(flags.FLAGS.config)))
        return
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    import vkd_jax
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(LlavaConfig(**MODEL_50M))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = vkd_jax.load_hf(d)
    batch = batches(model.config, a.batch)
    runs = []
    for name, method, preset in (("vkd", "vkd", "visual"), ("vkd_projector", "vkd", "projector"),
                                 ("gd_full", "gd", "full"), ("ga_full", "ga", "full"), ("gd_lora", "gd", "lora_llm")):
        runs.append(ours(model, name, method, preset, batch))
        print({k: v for k, v in runs[-1][0].items() if k != "times"}, flush=True)
    flops_by = {r["name"]: r["flops"] for r, _ in runs}
    errors = []
    for kind in (() if a.no_torch else ("gd_full", "vkd")):
        for compiled in ((False,) if a.no_compile else (False, True)):
            try:
                r, fn = torch_steps(hf, batch, kind, compiled, a.compile_timeout)
                r["flops"] = flops_by[r["name"]]
                runs.append((r, fn))
                print({k: v for k, v in r.items() if k != "times"}, flush=True)
            except Exception as e:  # noqa: BLE001  torch.compile may not work on this machine: record why
                errors.append(f"{kind} torch compile: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                print(errors[-1], flush=True)
    peak_runs = matmul_peak_runners()
    peak_times = {name: [] for name, _, _ in peak_runs}
    for i in range(a.repeats + 1):  # interleaved: every variant, and the peak matmuls, once per round; round 0 warms up
        for r, fn in runs:
            t0 = time.perf_counter()
            fn()
            if i:
                r["times"].append(time.perf_counter() - t0)
        for name, fn, _ in peak_runs:
            t0 = time.perf_counter()
            fn()
            if i:
                peak_times[name].append(time.perf_counter() - t0)
    peak = peak_of(peak_times, {name: f for name, _, f in peak_runs})
    rows = [r for r, _ in runs]
    for r in rows:
        r["time"] = statistics.median(r["times"])
    t = {(r["name"], r["impl"]): r["time"] for r in rows}
    ratios = {}
    for r in rows:  # per-round ratios (same round = same machine load), then their median
        for base in ("gd_full", "ga_full"):
            b = next(x for x in rows if x["name"] == base and x["impl"] == "ours (jit)")
            if r["impl"] == "ours (jit)" and r["name"].startswith("vkd"):
                ratios[(r["name"], base)] = statistics.median(x / y for x, y in zip(r["times"], b["times"]))
    lines = [f"`python bench/step.py --write bench/RESULTS.md` on {machine()}. ~50M LLaVA of bench/forward.py; "
             f"batch {a.batch} forget + {a.batch} retain VQA rows, {model.config.image_seq_length} image + {TEXT_LEN} "
             f"text tokens (answer: the last 8); AdamW, clip 1.0. All variants built first, then stepped "
             f"interleaved ({a.repeats} rounds after a warm-up round, each variant once per round); times are "
             f"medians, ratios are medians of per-round ratios. fp32 matmul peak (2048^3, timed in the same rounds) "
             f"{peak['peak'] / 1e9:.1f} GFLOP/s "
             f"(XLA {peak['xla'] / 1e9:.1f}, torch {peak.get('torch', 0) / 1e9:.1f}). FLOPs: matmul/conv FLOPs "
             f"counted from the shapes of every dot_general in our step's jaxpr (forward + backward as we compute "
             f"them); torch rows are credited with the same count for the same math (the useful work; the "
             f"reference also computes full-length logits, not counted). 'frozen wgrad dots': dot_generals in our "
             f"step producing a frozen weight's shape (weight-gradient matmuls of frozen params; must be 0).", "",
             "| step | impl | trainable params | time (ms) | compile (s) | GFLOP | GFLOP/s | % of peak | "
             "frozen wgrad dots |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gf = r["flops"] / r["time"] / 1e9 if r["flops"] else float("nan")
        lines.append(f"| {r['name']} | {r['impl']} | {r['trainable'] / 1e6:.1f}M | {1e3 * r['time']:.0f} | "
                     f"{r['compile']:.1f} | {r['flops'] / 1e9:.0f} | {gf:.1f} | {100 * gf / (peak['peak'] / 1e9):.0f}% "
                     f"| {r.get('wgrad', '-')} |")
    lines.append("")
    for (n, base), v in ratios.items():
        lines.append(f"- {n} / {base} step time (ours, same forget+retain rows): {v:.2f} (target <= 0.5); "
                     f"FLOP ratio {flops_by[n] / flops_by[base]:.2f}")
    for kind in ("gd_full", "vkd"):
        best = min((v for (n, impl), v in t.items() if n == kind and impl.startswith("torch")), default=None)
        if best is not None:
            lines.append(f"- {kind}: best torch / ours = {best / t[(kind, 'ours (jit)')]:.2f} (target >= 1)")
    lines += [f"- {e}" for e in errors]
    lines += llava7b_projection(flags.FLAGS.config)
    body = "\n".join(lines)
    print(body)
    if a.write:
        append_section(a.write, "Train step (issue 4)", body)


if __name__ == "__main__":
    define_flags()
    app.run(main)
