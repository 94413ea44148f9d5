"""User errors (vkd_jax.errors) print one `error:` line and exit 1 through the command-line guards; any other
exception is a bug and keeps its traceback."""

import ast
import logging
import signal
import sys
import threading

import pytest

from vkd_jax import errors
from vkd_jax.cli import guarded, run_cli, user_errors

pytestmark = pytest.mark.unit


@pytest.fixture
def quiet_guard(monkeypatch):
    """`guarded` installs process-wide hooks (unraisable/thread hooks, log filters, a SIGTERM handler): put them
    back after the test."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    filters = {n: list(logging.getLogger(n).filters) for n in ("absl", "asyncio")}
    sigterm = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, sigterm)
    for n, f in filters.items():
        logging.getLogger(n).filters[:] = f


def test_user_error_classes():
    from vkd_jax.digests import DamagedCheckpointError
    from vkd_jax.io_utils import OutputExistsError
    from vkd_jax.models.config import ConfigError
    from vkd_jax.models.hf_io import CheckpointError
    from vkd_jax.models.safetensors_io import SafetensorsError
    from vkd_jax.preflight import PreflightError
    from vkd_jax.shipped import ShippedModelError
    from vkd_jax.unlearn.checkpoint import CheckpointWriteError
    from vkd_jax.unlearn.partition import PartitionError

    for cls in (ConfigError, CheckpointError, SafetensorsError, errors.DataError, DamagedCheckpointError,
                ShippedModelError, PartitionError, CheckpointWriteError, PreflightError, OutputExistsError):
        assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError), cls  # `except ValueError` works
    assert issubclass(OutputExistsError, FileExistsError)
    assert ConfigError is errors.ConfigError and CheckpointError is errors.CheckpointError
    assert str(errors.DataError("a.parquet", 3, "image", "bad")) == "a.parquet: row 3, column 'image': bad"
    assert str(errors.DataError(None, None, None, "folder 'x' holds no images")) == "folder 'x' holds no images"


def test_errors_module_imports_nothing_from_vkd_jax():
    tree = ast.parse(open(errors.__file__).read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.startswith("vkd_jax")], names


def test_guarded_user_error_is_one_line_and_exit_1(quiet_guard, capsys):
    with pytest.raises(SystemExit) as e:
        with guarded(["run"]):
            raise errors.ConfigError("config.method='nope': unknown unlearning method")
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: config.method='nope': unknown unlearning method"], err


@pytest.mark.parametrize("bug", [ValueError("bug"), KeyError("bug"), TypeError("bug"), FileNotFoundError("bug")])
def test_guarded_lets_a_bug_through_with_its_traceback(quiet_guard, capsys, bug):
    with pytest.raises(type(bug)) as e:
        with guarded(["run"]):
            raise bug
    assert e.value is bug and e.value.__traceback__ is not None
    assert "error:" not in capsys.readouterr().err


def test_user_errors_and_run_cli(capsys):
    with pytest.raises(SystemExit) as e:
        with user_errors():
            raise errors.DataError("forget_5/train.parquet", 1, "image", "undecodable image bytes")
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: forget_5/train.parquet: row 1, column 'image': undecodable image bytes\n"

    def main(argv):
        raise errors.CheckpointError(f"{argv[0]}: no safetensors weights")

    assert run_cli(main, ["hf"]) == 1
    assert capsys.readouterr().err == "error: hf: no safetensors weights\n"
    assert run_cli(lambda argv: None, []) == 0

    def buggy(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        run_cli(buggy, [])


def test_user_input_errors_are_user_errors(tmp_path):
    from vkd_jax.cli import parse_size
    from vkd_jax.config_base import apply_variant, base, load_config
    from vkd_jax.distributed import detect

    for bad in ("nope=1", "method", "forget=five"):
        with pytest.raises(errors.ConfigError, match="config variant"):
            apply_variant(base(), bad)
    with pytest.raises(errors.ConfigError, match="is not a python config file"):
        load_config(str(tmp_path / "missing.py"))
    with pytest.raises(errors.ConfigError, match="--max_shard_size"):
        parse_size("lots")
    with pytest.raises(errors.ConfigError, match="go together"):
        detect("127.0.0.1:1234", None, 0, environ={})
