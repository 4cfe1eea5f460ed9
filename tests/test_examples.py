"""The examples: MAML-RL first meta-gradients equal ``metaopt maml-rl``'s, tiny-budget runs, ``--help``."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from metaopt.maml import MAMLConfig, MetaLearner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: example file stem -> the MetaLearner engine it must agree with
MAML_EXAMPLES = {"maml_rl_func": "func", "maml_rl_higher": "higher", "maml_rl_torchopt": "torchopt"}
TINY = ["--iterations", "2", "--tasks", "3", "--trajectories", "4"]
RTOL = 1e-8


def load_example(stem: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{stem}", EXAMPLES / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


def reference_meta_gradient(args, engine: str) -> dict[str, torch.Tensor]:
    """First routed meta-gradient of ``MetaLearner`` with the example's settings on ``engine``, by example name."""
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    learner = MetaLearner(MAMLConfig(engine=engine, popart=True, learn=("beta", "lr"), **fields))
    grads = learner.meta_gradient(learner.sample_iteration()).grads
    names = [name.partition(".")[2] for name, _ in learner.named_parameters()]  # model.<param>, meta.<name>
    return dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("stem", sorted(MAML_EXAMPLES))
@pytest.mark.parametrize(
    "flags",
    [
        ["--seed", "0"],
        ["--seed", "3", "--inner-steps", "3", "--inner-lr", "0.05", "--beta", "0.3", "--hidden", "16"],
    ],
    ids=["default", "three-steps"],
)
def test_first_meta_gradient_matches_metalearner(stem: str, flags: list[str]) -> None:
    module = load_example(stem)
    args = module.parse_args(["--dtype", "float64", "--tasks", "3", "--trajectories", "4", *flags])
    got = module.first_meta_gradient(args)
    ref = reference_meta_gradient(args, MAML_EXAMPLES[stem])
    assert set(got) == set(ref)
    errors = {}
    for name, r in ref.items():
        assert got[name].dtype == torch.float64 and got[name].shape == r.shape, name
        assert torch.isfinite(r).all() and r.abs().sum() > 0, f"reference gradient of {name} is zero or non-finite"
        errors[name] = float((got[name] - r).norm() / r.norm())
    assert max(errors.values()) <= RTOL, errors


@pytest.mark.parametrize("stem", sorted(MAML_EXAMPLES))
def test_example_defaults_match_maml_config(stem: str) -> None:
    """The examples' defaults are ``metaopt maml-rl --popart --learn beta,lr``'s (inner_steps resolved: 2)."""
    ref = MAMLConfig(popart=True, learn=("beta", "lr")).validate()
    args = load_example(stem).Args()
    assert args.inner_steps == ref.inner_steps == 2
    for f in dataclasses.fields(args):
        assert getattr(args, f.name) == getattr(ref, f.name), f.name


def run_example(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=120, cwd=EXAMPLES.parent
    )


@pytest.mark.parametrize("stem", sorted(MAML_EXAMPLES))
def test_maml_example_runs_with_tiny_budget(stem: str) -> None:
    proc = run_example(EXAMPLES / f"{stem}.py", *TINY)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter")]
    assert len(lines) == 2, proc.stdout
    for line in lines:
        for key in ("pre_return", "post_return", "beta", "lr"):
            assert key in line, line
        values = line.split()
        assert all(v != "nan" for v in values), line


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_supports_help(path: Path) -> None:
    proc = run_example(path, "--help")
    assert proc.returncode == 0, f"{path.name} --help failed:\n{proc.stderr}"
    assert "usage" in proc.stdout.lower(), proc.stdout


def test_meta_objective_artifact_example_shows_the_sigma_path():
    g = load_example("meta_objective_artifact").measure(load_example("meta_objective_artifact").Args(tasks=6))
    assert abs(g["normalized"]["beta/value"]) > 100 * abs(g["sg_scale"]["beta/value"])  # the sigma-inflation path
    assert g["normalized"]["lr/value"] == pytest.approx(g["sg_scale"]["lr/value"], rel=1e-6)  # lr: no sigma path
    assert abs(g["sg_scale"]["lr/value"]) > 10 * abs(g["sg_scale"]["lr/policy"])  # the value term dominates lr
