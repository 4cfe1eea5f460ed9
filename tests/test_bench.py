"""The benchmark harness: quick run end to end, and the baseline's identical math (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from metaopt import cli
from metaopt.experiments import bench
from metaopt.maml import MAMLConfig, MetaLearner

pytest.importorskip("torchopt")
pytest.importorskip("higher")

SECTIONS = ("stamp", "settings", "identical_math", "comparison", "tasks", "unroll", "popart", "targets")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    torch_threads = torch.get_num_threads()
    try:
        code = cli.main(["bench", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(torch_threads)
    return code, out


def test_quick_cli_writes_json_and_markdown(quick_run):
    code, out = quick_run
    assert code == 0
    assert (out / "quick.json").is_file() and (out / "quick.md").is_file()


def test_quick_results_have_all_sections_and_the_stamp(quick_run):
    _, out = quick_run
    res = json.loads((out / "quick.json").read_text())
    for key in SECTIONS:
        assert key in res, key
    st = res["stamp"]
    assert st["commit"] and isinstance(st["commit"], str)
    assert st["machine"]["torch_threads"] == 1 and st["machine"]["cpu_count"] >= 1
    for lib in ("python", "torch", "numpy", "higher", "torchopt"):
        assert st["versions"][lib]
    methods = [r["method"] for r in res["comparison"]["rows"]]
    assert methods == list(bench.METHODS)
    for r in res["comparison"]["rows"]:
        assert r["median_s"] > 0 and r["reps"] == 2 and r["peak_delta_mb"] >= 0
    assert {(r["method"], r["tasks"]) for r in res["tasks"]} == {("func", 2), ("func", 4), ("baseline", 2),
                                                                ("baseline", 4)}
    assert {(r["mode"], r["inner_steps"]) for r in res["unroll"]["rows"]} == {
        (m, k) for m in bench.UNROLL_MODES for k in (1, 2)
    }
    assert [r["variant"] for r in res["popart"]] == ["no PopArt", "PopArt", "PopArt, learn lr+beta"]
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    assert len([t for t in res["targets"] if not t["extra"]]) == 7
    # the identical-math proof ran inside the harness too
    f64 = [c for c in res["identical_math"] if c["dtype"] == "float64"]
    assert f64 and all(c["grad_rel_error"] <= 1e-8 and c["trajectories_identical"] for c in f64)
    md = (out / "quick.md").read_text()
    for heading in ("Identical math", "One meta-iteration", "number of tasks", "unroll length", "PopArt overhead",
                    "Targets"):
        assert heading in md
    assert st["commit"] in md and "torch threads 1" in md


@pytest.mark.parametrize("rollout", ["vector", "sequential"])
def test_baseline_meta_gradient_equals_func_in_float64(rollout):
    cfg = MAMLConfig(tasks=3, trajectories=4, dtype="float64", eval_tasks=1, seed=3)
    check = bench.check_identical_math(cfg, rollout=rollout)
    assert check["trajectories_identical"]
    assert check["grad_rel_error"] <= 1e-8
    assert check["grad_max_rel_error_per_tensor"] <= 1e-8
    assert check["max_abs_diff_outer_loss"] <= 1e-10


def test_baseline_meta_gradient_is_not_trivially_equal():
    """The check can fail: a different inner lr changes the baseline's meta-gradient."""
    cfg = MAMLConfig(tasks=2, trajectories=4, dtype="float64", eval_tasks=1)
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()
    grads = []
    for lr in (0.1, 0.2):
        base = bench.TorchOptBaseline(learner.model, MAMLConfig(**(cfg.to_dict() | {"inner_lr": lr})))
        base.meta_gradient(data)
        grads.append(torch.cat([p.grad.reshape(-1) for p in base.policy.parameters()]))
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) > 1e-6


def test_baseline_step_updates_policy_and_restores_between_tasks():
    cfg = MAMLConfig(tasks=2, trajectories=3, eval_tasks=1)
    learner = MetaLearner(cfg)
    base = bench.TorchOptBaseline(learner.model, cfg)
    before = [p.detach().clone() for p in base.policy.parameters()]
    leaves = list(base.policy.parameters())
    info = base.step(learner.sample_iteration())
    assert info["pre_return"].shape == (2,) and info["post_return"].shape == (2,)
    after = list(base.policy.parameters())
    assert all(a is b and a.is_leaf for a, b in zip(after, leaves, strict=True))  # recover_state_dict restored them
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the outer Adam step moved them


def test_baseline_rejects_settings_it_does_not_implement():
    model = MetaLearner(MAMLConfig(tasks=1, eval_tasks=1)).model
    with pytest.raises(ValueError, match="inner_steps"):
        bench.TorchOptBaseline(model, MAMLConfig(inner_steps=2))
    with pytest.raises(ValueError, match="popart"):
        bench.TorchOptBaseline(model, MAMLConfig(popart=True))
    with pytest.raises(ValueError, match="rollout"):
        bench.TorchOptBaseline(model, MAMLConfig(), rollout="parallel")


def test_measure_in_a_spawned_child_reports_time_and_memory():
    s = bench.BenchSettings(tasks=2, trajectories=3, budget_s=5.0, min_reps=1)
    spec = bench._spec(s, "func", s.config(), warmup=1, reps=2)
    r = bench.measure_isolated(spec, isolation="spawn", timeout_s=120)
    assert r["reps"] == 2 and r["median_s"] > 0 and r["tasks"] == 2
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["peak_delta_mb"] >= 0


def test_settings_and_cli_validation(tmp_path, capsys):
    with pytest.raises(ValueError, match="isolation"):
        bench.BenchSettings(isolation="thread").validate()
    with pytest.raises(ValueError, match="unroll"):
        bench.BenchSettings(unroll=(0,)).validate()
    with pytest.raises(SystemExit):
        cli.main(["bench", "--unroll", "1,x", "--out", str(tmp_path)])
    assert cli.main(["bench", "--quick", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "threads" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_targets_are_computed_from_the_measurements():
    def timing(m):
        return {"median_s": m, "cpu_median_s": m}

    res = {
        "settings": {"metric": "cpu"},
        "comparison": {"rows": [
            {"method": "baseline", "speedup_vs_baseline": 1.0, "time_ratio_to_baseline": 1.0} | timing(1.0),
            {"method": "higher", "speedup_vs_baseline": 0.5, "time_ratio_to_baseline": 2.0} | timing(2.0),
            {"method": "torchopt", "speedup_vs_baseline": 1.0, "time_ratio_to_baseline": 1.0} | timing(1.0),
            {"method": "func", "speedup_vs_baseline": 40.0, "time_ratio_to_baseline": 0.025} | timing(0.025),
        ]},
        "tasks": [{"method": "func", "tasks": 10} | timing(0.01), {"method": "func", "tasks": 640} | timing(1.28)],
        "popart": [{"variant": "no PopArt", "overhead": 0.0}, {"variant": "PopArt", "overhead": 0.05}],
        "unroll": {"rows": [
            {"mode": m, "inner_steps": k, "peak_delta_mb": (10.0 * k if m != "first_order" else 3.0)}
            for m in bench.UNROLL_MODES for k in (1, 4, 16)
        ]},
    }
    targets = bench.evaluate_targets(res)
    assert [t["met"] for t in targets] == [True, False, True, False, True, True, True, False]
    assert [t["extra"] for t in targets] == [False] * 7 + [True]  # truncate=1 memory is an extra row
    assert targets[0]["measured"].startswith("40.0x") and "exponent 1.17" in targets[3]["measured"]
