"""The first-hour sharp edges of issue 12 at the job/CLI level (each failed before its fix)."""

from __future__ import annotations

import csv
import re

import pytest
import torch

from metaopt.cli import main
from metaopt.meta_params import MetaParameters
from metaopt.verify import cli as verify_cli

SMOKE = ["maml-rl", "--preset", "smoke", "--no-progress", "--no-plot", "--iterations", "2"]


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_rerun_into_a_used_out_dir_is_refused_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMOKE, "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*SMOKE, "--out", str(out), "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before
    # explicitly asked: a fresh run replaces the previous one's artifacts
    assert main([*SMOKE, "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert '"seed": 3' in (out / "config.json").read_text()
    assert main([*SMOKE, "--out", str(out), "--resume", "--overwrite"]) == 2


def test_verify_out_directory_is_refused_before_any_check_runs(tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("the checks ran")

    monkeypatch.setattr(verify_cli, "run_catalogue", boom)
    assert main(["verify", "--checks", "torchopt-toy", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--out must be a file path" in err and "is a directory" in err and "Traceback" not in err


def test_eval_every_zero_means_only_at_the_end(tmp_path):
    out = tmp_path / "run"
    assert main([*SMOKE, "--iterations", "3", "--eval-every", "0", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [3]


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["maml-rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--inner-lr", "0.1"), ("--engine", "func"), ("--meta-lr", "0.01")):
        block = text.split(flag + " ")[-1].split(" --")[0]
        assert block.count("(default:") == 1 and f"(default: {default})" in block, block
    assert "(default: None)" not in text
    assert "0 evaluates only at the end" in text


def test_summary_lists_only_artifacts_that_exist(tmp_path, monkeypatch, capsys):
    from metaopt.maml import learner as maml

    base = maml.BatchedTabularMDP

    class Poisoned(base):
        def rollout_table(self, logits, noise):
            traj = base.rollout_table(self, logits, noise)
            traj.rewards[:] = float("nan")
            return traj

    monkeypatch.setattr(maml, "BatchedTabularMDP", Poisoned)
    out = tmp_path / "run"
    assert main([*SMOKE, "--out", str(out)]) == 3
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("artifacts in"))
    listed = re.findall(r"[\w.]+\.(?:csv|json|pt|png)", line)
    assert listed and all((out / name).is_file() for name in listed)
    assert "checkpoint.pt" not in listed and "eval.csv" not in listed


def test_meta_parameter_values_are_properties():
    meta = MetaParameters(lr=0.2, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    assert float(meta.lr.detach()) == pytest.approx(0.2) and float(meta.beta.detach()) == pytest.approx(0.3)
    assert meta.lr.requires_grad and meta.beta.requires_grad
    per = MetaParameters(lr=0.2, per_parameter=["a", "b"])
    assert set(per.lr) == {"a", "b"} and per.lr_by_name(["b", "a"])["a"].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"per_parameter must name every model parameter; missing \['c'\]"):
        per.lr_by_name(["a", "c"])
