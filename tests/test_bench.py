"""The benchmark harness (``benchmarks/``): quick run end to end, the baselines' math, the FLOP model, settings.

No timing assertions: times and ratios are reported, never asserted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``benchmarks`` lives at the repository root, outside the installed package
    sys.path.append(str(ROOT))

pytest.importorskip("torchopt")
pytest.importorskip("higher")

from benchmarks import baseline, flops, harness, report, run, settings  # noqa: E402
from benchmarks.settings import METHODS, QUICK, UNROLL_MODES, BenchSettings  # noqa: E402
from metaopt import cli  # noqa: E402
from metaopt.dataclass_args import flag_name  # noqa: E402
from metaopt.envs import ENV_ID  # noqa: E402
from metaopt.maml import MAMLConfig, MetaLearner  # noqa: E402

SECTIONS = ("stamp", "settings", "machine_rates", "identical_math", "as_written_check", "comparison", "scale",
            "unroll", "popart", "targets")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    torch_threads = torch.get_num_threads()
    try:
        code = run.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(torch_threads)
    return code, out


# ------------------------------------------------------------------------------------------------ quick run
def test_quick_run_writes_json_and_markdown(quick_run):
    code, out = quick_run
    assert code == 0
    assert (out / "quick.json").is_file() and (out / "quick.md").is_file()


def test_quick_results_have_all_sections_the_stamp_and_rates(quick_run):
    _, out = quick_run
    res = json.loads((out / "quick.json").read_text())
    for key in SECTIONS:
        assert key in res, key
    st = res["stamp"]
    assert st["commit"] and isinstance(st["commit"], str)
    assert st["device"]["type"] == "cpu" and st["device"]["name"]
    assert st["machine"]["torch_threads"] == 1 and st["machine"]["cpu_count"] >= 1
    for lib in ("python", "torch", "numpy", "higher", "torchopt", "gymnasium"):
        assert st["versions"][lib]
    for key, shape in (("peak", flops.PEAK_SHAPE), ("job_shape", flops.JOB_SHAPE)):
        r = res["machine_rates"][key]
        assert r["shape"] == list(shape) and r["flops"] == 2 * shape[0] * shape[1] * shape[2] and r["gflops"] > 0
    assert res["settings"]["metric"] == "cpu"  # auto with one thread

    cfg = MAMLConfig(tasks=QUICK.tasks, eval_tasks=1)
    assert [r["method"] for r in res["comparison"]["rows"]] == list(METHODS)
    for r in res["comparison"]["rows"]:
        assert r["median_s"] > 0 and r["reps"] == 2 and r["peak_delta_mb"] >= 0
        assert r["flops"] == flops.iteration_flops(cfg)
        assert r["gflops"] == pytest.approx(r["flops"] / r["cpu_median_s"] / 1e9)
        assert r["env_steps_per_s"] == pytest.approx(2 * QUICK.tasks * 20 * 10 / r["cpu_median_s"])
    assert {(r["method"], r["tasks"]) for r in res["scale"]} == {("metaopt-func", 2), ("metaopt-func", 8),
                                                                ("baseline", 2)}
    for r in res["scale"]:
        assert r["env_steps_per_s"] == pytest.approx(2 * r["tasks"] * 200 / r["cpu_median_s"])
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    assert {(r["mode"], r["inner_steps"]) for r in res["unroll"]["rows"]} == {
        (m, k) for m in UNROLL_MODES for k in (1, 2)
    }
    assert [r["variant"] for r in res["popart"]] == ["no PopArt", "PopArt", "PopArt, learn lr+beta"]
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    assert len([t for t in res["targets"] if not t["extra"]]) == 8
    # the identical-math proof and the as-written sanity check ran inside the harness too
    f64 = [c for c in res["identical_math"] if c["dtype"] == "float64"]
    assert len(f64) == 2 and all(c["grad_rel_error"] <= 1e-8 and c["trajectories_identical"] for c in f64)
    assert res["as_written_check"]["finite"] and res["as_written_check"]["same_shapes"]
    md = (out / "quick.md").read_text()
    for heading in ("Machine: achievable matmul rate", "Identical math", "torchopt-as-written: a sane",
                    "One meta-iteration", "Scale: throughput", "unroll length", "PopArt overhead", "Targets"):
        assert heading in md
    assert st["commit"] in md and "torch threads 1" in md and "device: cpu" in md


# -------------------------------------------------------------------------------------------- the baselines
@pytest.mark.parametrize("rollout", ["vector", "sequential"])
def test_crn_baseline_meta_gradient_equals_metaopt_in_float64(rollout):
    cfg = MAMLConfig(tasks=3, trajectories=4, dtype="float64", eval_tasks=1, seed=3)
    check = baseline.check_identical_math(cfg, rollout=rollout)
    assert check["trajectories_identical"]
    assert check["grad_rel_error"] <= 1e-8
    assert check["grad_max_rel_error_per_tensor"] <= 1e-8
    assert check["max_abs_diff_outer_loss"] <= 1e-10


def test_crn_baseline_meta_gradient_is_not_trivially_equal():
    """The check can fail: a different inner lr changes the baseline's meta-gradient."""
    cfg = MAMLConfig(tasks=2, trajectories=4, dtype="float64", eval_tasks=1)
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()
    grads = []
    for lr in (0.1, 0.2):
        base = baseline.TorchOptCRN(learner.model, dataclasses.replace(cfg, inner_lr=lr))
        base.meta_gradient(data)
        grads.append(torch.cat([g.reshape(-1) for g in base.gradients()]))
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) > 1e-6


@pytest.mark.parametrize("cls", [baseline.TorchOptCRN, baseline.TorchOptAsWritten])
def test_baseline_step_updates_policy_and_restores_between_tasks(cls):
    cfg = MAMLConfig(tasks=2, trajectories=3, eval_tasks=1)
    learner = MetaLearner(cfg)
    base = cls(learner.model, cfg)
    before = [p.detach().clone() for p in base.policy.parameters()]
    leaves = list(base.policy.parameters())
    info = base.step(learner.sample_iteration())
    assert info["pre_return"].shape == (2,) and info["post_return"].shape == (2,)
    after = list(base.policy.parameters())
    assert all(a is b and a.is_leaf for a, b in zip(after, leaves, strict=True))  # recover_state_dict restored them
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the outer Adam step moved them


def test_baselines_reject_settings_they_do_not_implement():
    model = MetaLearner(MAMLConfig(tasks=1, eval_tasks=1)).model
    with pytest.raises(ValueError, match="inner_steps.*expected"):
        baseline.TorchOptCRN(model, MAMLConfig(inner_steps=2))
    with pytest.raises(ValueError, match="popart"):
        baseline.TorchOptAsWritten(model, MAMLConfig(popart=True))
    with pytest.raises(ValueError, match="rollout must be 'vector' or 'sequential', got 'parallel'"):
        baseline.TorchOptCRN(model, MAMLConfig(), rollout="parallel")


def test_as_written_plays_a_gymnasium_env_with_its_own_rng():
    cfg = MAMLConfig(tasks=1, trajectories=3, eval_tasks=1)
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()

    def rollout(seed: int) -> baseline.Traj:
        torch.manual_seed(0)
        base = baseline.TorchOptAsWritten(learner.model, cfg, seed=seed)
        assert base.env.spec.id == ENV_ID  # made by gymnasium.make, wrappers included
        return base.sample_traj(data, 0, "pre")

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))  # same seeds: the same episodes
    assert not (a.rews == c.rews).all()  # another env seed: other transitions and rewards
    assert a.obs[0, :, 0].all()  # every episode starts in state 0
    assert (a.gammas[-1] == 0).all() and (a.gammas[:-1] == cfg.gamma).all()  # done at the horizon only


def test_as_written_meta_gradient_is_sane():
    """Finite, same shapes, and statistically the magnitude and direction of metaopt's (float64, seeded).

    Tolerances: with 8 draws per side the ratio of the mean norms came out within 1.00-1.05 for seeds 0, 1 and 5
    (a metaopt norm varies by 6-13% between draws), so 0.2 leaves a wide margin; per tensor, the policy head's
    gradients are the noisiest (ratios 0.92-1.27), hence a factor 1.5. The mean gradients point the same way up to
    noise (cosine 0.9996-0.9999; two halves of metaopt's own draws: 0.9993).
    """
    cfg = MAMLConfig(tasks=4, trajectories=20, dtype="float64", eval_tasks=1, seed=5)
    c = baseline.compare_as_written(cfg, draws=8)
    assert c["finite"] and c["same_shapes"]
    assert abs(c["norm_ratio"] - 1.0) <= 0.2, c
    assert all(1 / 1.5 <= r <= 1.5 for r in c["norm_ratio_per_tensor"]), c
    assert c["cosine_of_means"] >= 0.99, c


@pytest.mark.parametrize("scale", [2.0, -1.0])
def test_as_written_check_can_fail(scale):
    """A gradient twice too large fails the norm ratio; a sign error fails the cosine."""
    cfg = MAMLConfig(tasks=2, trajectories=5, dtype="float64", eval_tasks=1)
    c = baseline.compare_as_written(cfg, draws=2, scale=scale)
    assert abs(c["norm_ratio"] - 1.0) > 0.2 or c["cosine_of_means"] < 0.99


def test_compare_as_written_rejects_one_draw():
    with pytest.raises(ValueError, match="draws must be an int >= 2, got 1"):
        baseline.compare_as_written(MAMLConfig(tasks=1, eval_tasks=1), draws=1)


# ---------------------------------------------------------------------------------------------- FLOP model
def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_flop_formula_equals_torch_flop_counter():
    """The analytic count (benchmarks/flops.py) against torch's FLOP counter, exactly (both count matmuls)."""
    cfg = MAMLConfig(tasks=3, trajectories=5, horizon=4, eval_tasks=1)
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()

    def metaopt_iteration() -> None:
        loss, _ = learner.meta_loss(data, engine="func")
        loss.backward()

    assert _counted(metaopt_iteration) == flops.iteration_flops(cfg), "metaopt's meta-iteration changed its work"
    per_visit = MAMLConfig(tasks=3, trajectories=5, horizon=4, eval_tasks=1, state_table=False)
    visits = MetaLearner(per_visit)

    def per_visit_iteration() -> None:
        loss, _ = visits.meta_loss(data, engine="func")
        loss.backward()

    assert _counted(per_visit_iteration) == flops.iteration_flops(per_visit)
    base = baseline.TorchOptCRN(learner.model, cfg)
    assert _counted(lambda: base.meta_gradient(data)) == flops.iteration_flops(cfg, bootstrap="all")
    f, f1 = flops.forward_flops(10, 5, 32)
    assert (f, f1) == (3072, 640)
    assert flops.iteration_flops(MAMLConfig(state_table=False)) == 318_259_200  # quoted in the module docstring
    assert flops.iteration_flops(MAMLConfig()) == 18_661_120  # 18.7 MFLOP with the state table


def test_flop_formula_rejects_what_it_does_not_cover():
    with pytest.raises(ValueError, match="inner_steps"):
        flops.iteration_flops(MAMLConfig(inner_steps=2))
    with pytest.raises(ValueError, match="bootstrap must be 'last' or 'all', got 'some'"):
        flops.iteration_flops(MAMLConfig(), bootstrap="some")


def test_matmul_rate_reports_its_arithmetic():
    r = flops.matmul_rate(64, 32, 16, min_time_s=0.01, repeats=2)
    assert r["flops"] == 2 * 64 * 32 * 16 and r["seconds"] > 0
    assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e9)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        flops.matmul_rate(4, 0, 4)


# ------------------------------------------------------------------------------------------------- harness
def test_measure_in_a_spawned_child_reports_time_and_memory():
    s = BenchSettings(tasks=2, trajectories=3, budget_s=5.0, min_reps=1)
    spec = harness._spec(s, "metaopt-func", s.config(), warmup=1, reps=2)
    r = harness.measure_isolated(spec, isolation="spawn", timeout_s=120)
    assert r["reps"] == 2 and r["median_s"] > 0 and r["tasks"] == 2
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["peak_delta_mb"] >= 0


def test_make_step_names_the_methods():
    with pytest.raises(ValueError, match="method must be one of .*got 'func'"):
        harness.make_step("func", MAMLConfig(tasks=1, eval_tasks=1))


# ------------------------------------------------------------------------------------- settings and the CLI
def test_every_settings_field_is_a_flag_with_its_default_in_the_help():
    parser = settings.build_parser()
    text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(BenchSettings):
        assert flag_name(f.name) in text, f.name
    assert "(default: 10,40,160,640,2560; --quick: 2,8)" in text
    assert "(default: 1)" in text  # --threads: the field's default, stated once in the dataclass
    assert "--no-memory" in text and "--no-sequential" in text and "--no-as-written" in text


def test_flags_override_the_preset_and_the_defaults_come_from_the_dataclass():
    s, out = settings.parse_settings([])
    assert s == dataclasses.replace(BenchSettings(), metric="cpu") and out == Path("benchmarks/results")
    s, out = settings.parse_settings(["--quick", "--tasks", "3", "--no-memory", "--unroll", "1,4", "--out", "x"])
    assert (s.name, s.tasks, s.reps, s.memory, s.unroll, s.isolation) == ("quick", 3, QUICK.reps, False, (1, 4),
                                                                         "fork")
    assert out == Path("x")
    assert settings.parse_settings(["--threads", "2"])[0].metric == "wall"  # auto: CPU time adds up threads


def test_bad_settings_name_the_flag_the_value_and_what_was_expected(tmp_path, capsys):
    with pytest.raises(ValueError, match="isolation must be one of \\('spawn', 'fork'\\), got 'thread'"):
        BenchSettings(isolation="thread").validate()
    with pytest.raises(ValueError, match="unroll must be a non-empty list of ints >= 1, got \\(0,\\)"):
        BenchSettings(unroll=(0,)).validate()
    with pytest.raises(ValueError, match="budget_s must be a positive finite number of seconds, got 0"):
        BenchSettings(budget_s=0).validate()
    with pytest.raises(SystemExit):
        run.main(["--unroll", "1,x", "--out", str(tmp_path)])
    assert run.main(["--quick", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads must be an int >= 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_targets_are_computed_from_the_measurements():
    def timing(m):
        return {"median_s": m, "cpu_median_s": m}

    res = {
        "settings": {"metric": "cpu"},
        "comparison": {"rows": [
            {"method": "baseline", "speedup_vs_baseline": 1.0, "time_ratio_to_baseline": 1.0} | timing(1.0),
            {"method": "metaopt-higher", "speedup_vs_baseline": 0.5, "time_ratio_to_baseline": 2.0} | timing(2.0),
            {"method": "metaopt-torchopt", "speedup_vs_baseline": 1.0, "time_ratio_to_baseline": 1.0} | timing(1.0),
            {"method": "metaopt-func", "speedup_vs_baseline": 40.0, "time_ratio_to_baseline": 0.025}
            | timing(0.025),
            {"method": "torchopt-as-written", "speedup_vs_baseline": 0.2, "time_ratio_to_baseline": 5.0}
            | timing(5.0),
        ]},
        "scale": [{"method": "metaopt-func", "tasks": 10} | timing(0.01),
                  {"method": "metaopt-func", "tasks": 640} | timing(1.28)],
        "popart": [{"variant": "no PopArt", "overhead": 0.0}, {"variant": "PopArt", "overhead": 0.05},
                   {"variant": "PopArt, learn lr+beta", "overhead": 0.2}],
        "unroll": {"rows": [
            {"mode": m, "inner_steps": k, "peak_delta_mb": (10.0 * k if m != "first_order" else 3.0)}
            for m in UNROLL_MODES for k in (1, 4, 16)
        ]},
    }
    targets = report.evaluate_targets(res)
    names = [t["target"] for t in targets]
    assert names[:2] == ["metaopt-func >= 15x faster than the vector-env baseline per meta-iteration",
                         "metaopt-func >= 100x faster than TorchOpt's example as written"]
    met = dict(zip(names, (t["met"] for t in targets), strict=True))
    assert met[names[0]] and met[names[1]]  # 40x and 200x
    assert not met["metaopt-higher <= 1.2x the baseline's time"] and met["metaopt-torchopt <= 1.2x the baseline's time"]
    assert not met["metaopt-func time sub-linear in tasks (10 -> 640)"]  # x128 time for x64 tasks
    assert not met["PopArt, learn lr+beta: overhead <= 10%"] and met["PopArt: overhead <= 10%"]
    assert met["memory linear in K for full unrolls"] and met["memory flat in K for first-order"]
    assert not met["memory flat in K for truncate=1"]
    assert targets[0]["measured"].startswith("40.0x") and targets[1]["measured"].startswith("200.0x")
    extras = [t["target"] for t in targets if t["extra"]]
    assert extras == ["PopArt: overhead <= 10%", "memory flat in K for truncate=1"]
    res["scale"] = []  # --no-scale: no sub-linearity row
    assert len(report.evaluate_targets(res)) == len(targets) - 1


def test_the_installed_package_carries_no_benchmark_harness():
    assert "bench" not in cli.SUBCOMMANDS
    assert importlib.util.find_spec("metaopt.experiments.bench") is None
