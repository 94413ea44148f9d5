"""Imports run one way: the generic layers (models, data, eval, unlearn) know no benchmark and no run; a benchmark
package knows no other benchmark (what the embedded worlds share lives in vkd_jax/benchmarks/worlds.py); nothing
below the run imports the run's modules."""

import ast
import os

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vkd_jax")
RUN = ("vkd_jax.experiment", "vkd_jax.run_models", "vkd_jax.run_streams", "vkd_jax.run_eval", "vkd_jax.attacks",
       "vkd_jax.workdir", "vkd_jax.stopping", "vkd_jax.reproduce", "vkd_jax.comparison", "vkd_jax.tradeoff",
       "vkd_jax.main")


def _imports() -> dict[str, set[str]]:
    """{module: the vkd_jax modules it imports anywhere in its source (function-level imports included)}."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            mod = "vkd_jax." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            names = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vkd_jax"):
                    names.add(node.module)
                    names.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    names.update(a.name for a in node.names if a.name.startswith("vkd_jax"))
            out[mod] = names
    return out


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_generic_layers_import_no_benchmark_and_no_run():
    bad = [(m, i) for m, imps in _imports().items()
           if _under(m, ("vkd_jax.models", "vkd_jax.data", "vkd_jax.eval", "vkd_jax.unlearn"))
           for i in imps if _under(i, ("vkd_jax.benchmarks",) + RUN)]
    assert not bad, bad


def test_a_benchmark_imports_no_other_benchmark():
    names = [d for d in os.listdir(os.path.join(ROOT, "benchmarks"))
             if os.path.isfile(os.path.join(ROOT, "benchmarks", d, "__init__.py"))]
    assert set(names) >= {"mllmu", "clear"}
    bad = [(m, i) for m, imps in _imports().items() for b in names if _under(m, (f"vkd_jax.benchmarks.{b}",))
           for i in imps for other in names if other != b and _under(i, (f"vkd_jax.benchmarks.{other}",))]
    assert not bad, bad


def test_nothing_below_the_run_imports_it():
    run_level = RUN + ("vkd_jax.shipped", "vkd_jax.plan_pipeline", "vkd_jax.preflight", "vkd_jax.plan")
    bad = [(m, i) for m, imps in _imports().items() if not _under(m, run_level)
           for i in imps if _under(i, RUN)]
    assert not bad, bad
