"""Benchmarks behind one interface (`base.Benchmark`): config.data.benchmark names one of `BENCHMARKS`.

    from vkd_jax.benchmarks import make_benchmark
    bench = make_benchmark(cfg, shared, local_cache)
"""

from vkd_jax.benchmarks.base import Benchmark, StreamSpec, benchmark_dir

BENCHMARKS = {  # name -> "module:class" (imported on use: each module pulls in its TFDS builder)
    "mllmu": "vkd_jax.benchmarks.mllmu.adapter:MLLMUBench",
    "clear": "vkd_jax.benchmarks.clear.adapter:ClearBench",
}


def benchmark_class(name: str):
    import importlib

    if name not in BENCHMARKS:
        raise ValueError(f"config.data.benchmark={name!r}: use one of {sorted(BENCHMARKS)}")
    module, cls = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_benchmark(cfg, shared: str, local_cache: str | None = None) -> Benchmark:
    return benchmark_class(str(cfg.data.get("benchmark", "mllmu")))(cfg, shared, local_cache)


__all__ = ("BENCHMARKS", "Benchmark", "StreamSpec", "benchmark_class", "benchmark_dir", "make_benchmark")
