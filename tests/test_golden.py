"""Golden logits from transformers, checked without torch: the model stays right on machines without it."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any torch import now fails
sys.modules["transformers"] = None
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
import vkd_jax
g = np.load(sys.argv[2])
model = vkd_jax.load_hf(sys.argv[1])
ours = np.asarray(model(g["input_ids"], g["pixel_values"], g["attention_mask"]))
valid = g["attention_mask"] == 1
err = float(np.abs(ours[valid] - g["logits"][valid]).max())
print("max_abs_err", err)
assert err <= 1e-4, err
"""


def test_golden_logits_without_torch():
    r = subprocess.run([sys.executable, "-c", SCRIPT, os.path.join(HERE, "golden", "tiny_llava"),
                        os.path.join(HERE, "golden", "tiny_llava_logits.npz")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max_abs_err" in r.stdout
