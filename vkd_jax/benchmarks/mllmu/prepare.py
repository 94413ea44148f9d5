"""Prepare mllmu_bench TFDS configs from manual_dir parquet (a separate module: the builder must not run as
__main__, or TFDS registers it under the wrong module)."""

from vkd_jax.benchmarks.mllmu import reader as mllmu_bench


def main(argv=None):
    """python -m vkd_jax.benchmarks.mllmu.prepare --manual_dir M --data_dir D [--configs forget_5 ...]
    [--skip_bad_rows]"""
    import argparse
    ap = argparse.ArgumentParser(description="Prepare mllmu_bench TFDS configs (ArrayRecord) from manual_dir parquet.")
    ap.add_argument("--manual_dir", required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--configs", nargs="+", default=list(mllmu_bench.CONFIGS), choices=mllmu_bench.CONFIGS)
    ap.add_argument("--skip_bad_rows", action="store_true")
    a = ap.parse_args(argv)
    for c in a.configs:
        src = mllmu_bench.load(c, a.data_dir, a.manual_dir, a.skip_bad_rows)
        bad = mllmu_bench.tfds.builder(f"mllmu_bench/{c}", data_dir=a.data_dir).info.metadata.get("bad_rows", [])
        print(f"mllmu_bench/{c}: {len(src)} profiles" + (f", {len(bad)} bad rows/files skipped" if bad else ""))


if __name__ == "__main__":
    main()
