"""The estimator study: its statistics, the ``metaopt verify`` rows and the ``estimator-study`` command."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math

import pytest
import torch

from metaopt import cli
from metaopt.experiments import estimator_study
from metaopt.experiments.estimator_study import Settings, run_estimator_study, summarize
from metaopt.verify.catalogue import available_engines
from metaopt.verify.estimators import make_problem, sample_meta_gradients

F64 = torch.float64


def test_summarize_detects_a_known_bias_and_covers_zero_without_one():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(50, dtype=F64, generator=g)
    noise = torch.randn(200, 50, dtype=F64, generator=g)
    unbiased = summarize(ref + noise, ref, bootstrap=500)
    lo, hi = unbiased["rel_bias_ci"]
    assert lo <= 0.0 <= hi
    assert unbiased["rel_variance"] == pytest.approx(50 / float(ref.norm()) ** 2, rel=0.1)  # tr(I) = 50
    bias = 0.5 * torch.randn(50, dtype=F64, generator=g)
    biased = summarize(ref + bias + noise, ref, limit=ref + bias, bootstrap=500)
    expected = float(bias.norm() / ref.norm())
    assert biased["rel_bias_ci"][0] > 0 and biased["limit_rel_bias"] == pytest.approx(expected)
    assert biased["rel_bias"] == pytest.approx(expected, abs=0.05)
    assert biased["cosine_ci"][0] <= biased["cosine"] <= biased["cosine_ci"][1]
    with pytest.raises(ValueError, match=r"samples must be a \[R, P\] tensor with R >= 2"):
        summarize(ref[None], ref)


@pytest.fixture(scope="module")
def rows(catalogue_rows):
    """The ``estimators`` rows of the catalogue (:func:`check_estimators` on every installed engine)."""
    return [r for r in catalogue_rows if r.check == "estimators"]


def test_verify_rows_pass_on_every_engine(rows):
    assert all(r.passed for r in rows), [(r.engine, r.quantity, r.rel_error, r.tolerance) for r in rows if not r.passed]
    engines = set(available_engines())
    assert {r.engine for r in rows} == engines and len(rows) == 6 * len(engines)
    for r in rows:
        assert r.check == "estimators" and math.isfinite(r.rel_error) and r.rel_error <= r.tolerance
    # The engines differentiate the same sampled losses: their rows agree.
    for quantity in {r.quantity for r in rows}:
        values = [r.autograd for r in rows if r.quantity == quantity]
        assert max(values) - min(values) <= 1e-9 * max(abs(v) for v in values), quantity


def test_sampled_inner_step_is_identical_for_the_three_estimators():
    problem = make_problem(policy="tabular", num_tasks=2, num_states=4, num_actions=3, horizon=5, seed=1)
    samples, _ = sample_meta_gradients(problem, ("surrogate", "lvc", "dice"), 50, 2, seed=3)
    steps = samples["dice"].inner_steps
    assert steps.abs().max() > 0
    for e in ("surrogate", "lvc"):
        assert torch.allclose(samples[e].inner_steps, steps, rtol=0, atol=1e-12 * float(steps.abs().max()))
        assert not torch.allclose(samples[e].meta_gradients, samples["dice"].meta_gradients)


def _main(argv):
    """``metaopt estimator-study ARGV``'s exit code (argparse errors exit, run() returns)."""
    try:
        return cli.main(["estimator-study", *argv])
    except SystemExit as e:
        return e.code


def test_quick_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "dir"
    assert _main(["--quick", "--out", str(out)]) == 0
    data = json.loads((out / "study.json").read_text())
    rows = data["studies"]["value"]["rows"]
    assert {(r["estimator"], r["N"]) for r in rows} == {(e, n) for e in ("surrogate", "lvc", "dice")
                                                        for n in estimator_study.QUICK["sizes"]}
    assert all(r["rel_bias_ci"][0] <= r["rel_bias_ci"][1] and r["rel_variance"] > 0 for r in rows)
    assert data["settings"]["sizes"] == list(estimator_study.QUICK["sizes"]) and data["settings"]["quick"] is True
    assert "| value | dice | 100 |" in (out / "study.md").read_text()
    assert (out / "estimator_bias.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["estimator_bias.png", "study.json", "study.md"]  # no temporaries
    assert "| value | dice | 100 |" in capsys.readouterr().out


def test_save_samples_without_plot(tmp_path):
    assert _main(["--quick", "--sizes", "5", "--estimators", "dice,dice", "--no-plot", "--save-samples",
                  "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.pt", "study.json", "study.md"]
    raw = torch.load(tmp_path / "samples.pt", weights_only=True)
    # --quick replaces --sizes; the repeated estimator is run once.
    assert set(raw["value"]) == {"exact", "limit/dice"} | {f"dice/{n}{s}" for n in estimator_study.QUICK["sizes"]
                                                           for s in ("", "/linearized")}
    assert raw["value"]["dice/10"].shape[0] == estimator_study.QUICK["repeats"]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "10,0"], "--sizes must be a comma list of ints >= 1, got 10,0"),
    (["--sizes", "10,x"], "argument --sizes: expected a comma list of int values (or 'none'), got '10,x'"),
    (["--sizes", "none"], "--sizes must be a comma list of ints >= 1, got none"),
    (["--estimators", "dice,ppo"], "argument --estimators: expected a comma list of surrogate,lvc,dice (or 'none'), "
                                   "got 'dice,ppo' (unknown: ['ppo'])"),
    (["--baselines", "none"], "--baselines must be a comma list out of value,exact,none, got none"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--gamma", "1.5"], "--gamma must be a number in [0, 1], got 1.5"),
    (["--confidence", "1"], "--confidence must be a number in (0, 0.999], got 1.0"),
    (["--repeats", "1"], "--repeats must be an int >= 2, got 1"),
    (["--bootstrap", "5"], "--bootstrap must be an int >= 10, got 5"),
    (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    (["--num-tasks", "2.5"], "argument --num-tasks: invalid int value: '2.5'"),
    (["--policy", "mlp"], "argument --policy: invalid choice: 'mlp'"),
])
def test_cli_bad_arguments_name_the_flag_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main([*argv, "--quick", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("metaopt estimator-study: error: ") and message in errors[0]
    assert not out.exists()


def test_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    for out in (target, target / "sub"):
        assert _main(["--quick", "--out", str(out)]) == 2
        assert f"metaopt estimator-study: error: --out must be a directory path, got {str(out)!r}" \
            in capsys.readouterr().err
    assert target.read_text() == "keep"


def test_settings_defaults_are_the_study_defaults_and_quick_help_states_the_budget():
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    study = inspect.signature(run_estimator_study).parameters
    problem = inspect.signature(make_problem).parameters
    for name in ("estimators", "sizes", "repeats", "engine", "bootstrap", "confidence", "seed"):
        assert defaults[name] == study[name].default, name
    for name in ("policy", "num_tasks", "horizon", "lr", "gamma"):
        assert defaults[name] == problem[name].default, name
    parser = argparse.ArgumentParser()
    estimator_study.add_arguments(parser)
    quick = " ".join(next(a.help for a in parser._actions if "--quick" in a.option_strings).split())
    for name, value in estimator_study.QUICK.items():
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert f"{estimator_study.FLAGS[name]} {shown}" in quick, (name, quick)
