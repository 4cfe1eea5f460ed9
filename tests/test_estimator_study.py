"""The estimator study: its statistics, the ``metaopt verify`` rows and the ``estimator-study`` command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from metaopt.experiments import estimator_study
from metaopt.verify.catalogue import available_engines
from metaopt.verify.estimators import check_estimators, make_problem, sample_meta_gradients, summarize

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
def rows():
    return check_estimators(list(available_engines()))


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


def _parse(argv):
    parser = argparse.ArgumentParser()
    estimator_study.add_arguments(parser)
    return parser.parse_args(argv)


def test_quick_cli_writes_json_markdown_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    args = _parse(["--quick", "--out", str(tmp_path)])
    assert estimator_study.run(args) == 0
    data = json.loads((tmp_path / "study.json").read_text())
    rows = data["studies"]["value"]["rows"]
    assert {(r["estimator"], r["N"]) for r in rows} == {(e, n) for e in ("surrogate", "lvc", "dice")
                                                        for n in estimator_study.QUICK["sizes"]}
    assert all(r["rel_bias_ci"][0] <= r["rel_bias_ci"][1] and r["rel_variance"] > 0 for r in rows)
    assert "| value | dice | 100 |" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "estimator_bias.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "10,0"], "sizes must be a comma-separated list of integers >= 1"),
    (["--estimators", "dice,ppo"], "estimators must be a comma-separated list out of surrogate, lvc, dice"),
    (["--lr", "-1"], "lr must be a finite number > 0"),
    (["--repeats", "1"], "repeats must be an integer >= 2, got 1"),
])
def test_cli_bad_arguments_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
