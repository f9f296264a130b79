"""Shared by the checkpoint converter tests (``convert qfa-checkpoint``, ``convert ofa-checkpoint``): the
fixture maker scripts, the state dict a fixture describes, and the CLI run in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from click.testing import CliRunner

from qfa_deploy.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def fixture_maker(name: str) -> ModuleType:
    """``scripts/<name>.py`` (the script that made a fixture: it regenerates the fixture's weights)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``qfa-deploy ARGS`` (arguments made strings)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def rebuild_state(fixture: dict, maker: ModuleType) -> dict[str, torch.Tensor]:
    """The state dict of a fixture's manifest (key, shape, dtype in order): the maker's regenerated tensors
    where ``maker.is_generated(key)``, the fixture's stored ones elsewhere. Every tensor must have its
    manifest dtype and shape, and the regenerated ones sum (in absolute value) to the fixture's
    ``generated_abs_sum``, so a change of the generator is caught here."""
    state, regenerated = {}, 0.0
    for key, shape, dtype in fixture["manifest"]:
        if maker.is_generated(key):
            value = maker.generated_tensor(key, tuple(shape))
            regenerated += float(value.double().abs().sum())
        else:
            value = fixture["stored"][key]
        assert str(value.dtype) == f"torch.{dtype}" and list(value.shape) == shape, key
        state[key] = value
    assert regenerated == pytest.approx(fixture["generated_abs_sum"], rel=1e-12), "regeneration differs"
    return state
