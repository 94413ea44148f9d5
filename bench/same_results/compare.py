"""Whether two code versions give the same runs: `python bench/same_results/compare.py BEFORE AFTER`.

BEFORE and AFTER are folders of runs written by `same.sh` with each version (one sub-folder per run). Per run:
results.json equal once the wall-clock fields are dropped (every key holding "seconds"), and hf_export byte-equal
(sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys


def without_seconds(x):
    if isinstance(x, dict):
        return {k: without_seconds(v) for k, v in x.items() if "seconds" not in k}
    if isinstance(x, list):
        return [without_seconds(v) for v in x]
    return x


def digests(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def main(before: str, after: str) -> bool:
    same = True
    for run in sorted(os.listdir(before)):
        b, a = os.path.join(before, run), os.path.join(after, run)
        if not os.path.isdir(b):
            continue
        with open(os.path.join(b, "results.json")) as fb, open(os.path.join(a, "results.json")) as fa:
            rb, ra = without_seconds(json.load(fb)), without_seconds(json.load(fa))
        differ = sorted(k for k in set(rb) | set(ra) if rb.get(k) != ra.get(k))
        hb, ha = digests(os.path.join(b, "hf_export")), digests(os.path.join(a, "hf_export"))
        print(f"{run}: results.json {'equal' if not differ else 'differs in ' + ', '.join(differ)}; hf_export "
              f"{'byte-equal' if hb == ha and hb else 'differs'} ({len(hb)} files)")
        same &= not differ and hb == ha and bool(hb)
    print("all equal" if same else "NOT equal")
    return same


if __name__ == "__main__":
    sys.exit(0 if main(*sys.argv[1:3]) else 1)
