"""``metaopt study``: a tiny end-to-end run, resuming from cached runs, the targets' verdicts, bad input."""

from __future__ import annotations

import json

import pytest

from metaopt.cli import main
from metaopt.envs import sample_tasks
from metaopt.experiments.study import (
    QUICK,
    RunSpec,
    StudySettings,
    build_runs,
    exact_gains,
    execute,
    run_study,
    t_interval,
)
from metaopt.experiments.study._report import targets
from metaopt.maml import MAMLConfig, MetaLearner


def test_quick_scale_part_end_to_end_and_resume(tmp_path):
    s = StudySettings(**(QUICK | {"parts": ("scale",), "out": str(tmp_path)}))
    logs: list[str] = []
    summary = run_study(s, log=logs.append)
    assert (tmp_path / "study.json").is_file() and (tmp_path / "study.md").is_file()
    assert (tmp_path / "study_scale.png").is_file()
    rows = summary["aggregate"]["scale"]
    assert {r["method"] for r in rows} >= {"maml-K1", "popart-maml", "maml-learned-lr"}
    files = sorted((tmp_path / "runs").glob("*.json"))
    assert len(files) == len(logs)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = run_study(s, log=lambda _line: None)  # every run is cached: nothing is trained again
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert json.dumps(again["aggregate"]) == json.dumps(summary["aggregate"])


def test_cached_run_is_trained_again_when_its_configuration_changes(tmp_path):
    cfg = {"tasks": 2, "trajectories": 2, "iterations": 1, "eval_every": 0, "eval_tasks": 1, "seed": 0}
    spec = RunSpec("p", "m", 0.1, 0, cfg | {"inner_lr": 0.1}, (1.0,), 2, eval_repeats=1)
    first = execute(spec, tmp_path)
    assert execute(spec, tmp_path) == first
    changed = RunSpec("p", "m", 0.1, 0, cfg | {"inner_lr": 0.2}, (1.0,), 2, eval_repeats=1)
    assert changed.key == spec.key
    assert execute(changed, tmp_path)["config"]["inner_lr"] == 0.2


def test_exact_gains_vanish_without_an_inner_step_and_not_with_one():
    learner = MetaLearner(MAMLConfig(tasks=2, trajectories=3, dtype="float64", eval_tasks=1))
    base = sample_tasks(3, seed=5)
    moved = exact_gains(learner, base, (0.1, 10.0), trajectories=3, repeats=1, seed=0)
    learner.meta.log_lr.fill_(float("-inf"))  # lr = 0: the adapted policy is theta_0's
    still = exact_gains(learner, base, (0.1, 10.0), trajectories=3, repeats=1, seed=0)
    assert still.shape == moved.shape == (2, 3)
    assert still.abs().max() <= 1e-12  # float64 rounding of the exact evaluation only
    assert moved.abs().min() > 1e-6


def _agg(**rows):
    def row(method, value, mean, half=0.05, lr=(1.0,), config_lr=0.1):
        return {"method": method, "value": value, "mean_gain": (mean, half), "worst_gain": (mean - 0.1, half),
                "lr": list(lr), "beta": [0.1], "config_lr": config_lr}

    return {part: [row(*r) for r in rs] for part, rs in rows.items()}


def test_targets_report_met_and_not_met_from_the_numbers():
    agg = _agg(
        scale=[("maml-K1", 1.0, 1.0), ("maml-K1", 10.0, 1.2), ("maml-K2", 0.1, 0.5), ("popart-maml", None, 1.5)],
        interior=[("maml", 1.0, 0.2), ("maml", 10.0, 0.9, 0.1), ("maml", 100.0, 0.3),
                  ("maml-learned-lr", None, 0.8, 0.1, (12.0,))],
    )
    verdicts = {t["target"].split(":")[0]: t["met"] for t in targets(agg)}
    assert verdicts["PopArt-MAML (learned lr, beta) >= best swept plain MAML on mean normalized gain"]
    assert verdicts["PopArt-MAML better on worst-c gain, non-overlapping 95% intervals"]
    assert verdicts["interior optimum (maml)"] and verdicts["learned lr within 2x of the sweep's best lr (maml)"]
    # a peak whose interval reaches the right end's mean is not an interior optimum
    agg["interior"][2]["mean_gain"] = (0.85, 0.1)
    assert not {t["target"].split(":")[0]: t["met"] for t in targets(agg)}["interior optimum (maml)"]


def test_t_interval_uses_the_student_quantile():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5)


def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--quick", "--seeds", "0", "--out", str(out)]) == 2
    assert "--seeds must be an int >= 1, got 0" in capsys.readouterr().err and not out.exists()
    assert main(["study", "--quick", "--betas", "0.5,1.5", "--out", str(out)]) == 2
    assert "--betas must be a non-empty comma list of numbers in (0, 1)" in capsys.readouterr().err


def test_beta_part_runs_each_statistics_schedule_as_its_own_regime():
    s = StudySettings(**(QUICK | {"parts": ("beta",), "beta_statistics": ("debiased", "constant")}))
    runs = build_runs(s)
    by_method = {}
    for r in runs:
        by_method.setdefault(r.method, set()).add(r.config["debias"])
    assert by_method == {"fixed-beta-K2-T4": {True}, "learned-beta-K2-T4": {True},
                         "learned-beta-shared-lr-K2-T4": {True}, "fixed-beta-K2-T4-constant": {False},
                         "learned-beta-K2-T4-constant": {False}, "learned-beta-shared-lr-K2-T4-constant": {False}}
    # the default keeps the recommended (debiased) statistics only, with the method names of the committed study
    assert {r.method for r in build_runs(StudySettings(**(QUICK | {"parts": ("beta",)})))} == {
        "fixed-beta-K2-T4", "learned-beta-K2-T4", "learned-beta-shared-lr-K2-T4"}


def test_empty_or_unknown_statistics_schedule_exits_2(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exc:
        main(["study", "--quick", "--parts", "beta", "--beta-statistics", "sometimes", "--out", str(out)])
    assert exc.value.code == 2 and "got 'sometimes'" in capsys.readouterr().err and not out.exists()
    assert main(["study", "--quick", "--parts", "beta", "--beta-statistics", "none", "--out", str(out)]) == 2
    assert "--beta-statistics must name at least one of" in capsys.readouterr().err and not out.exists()


def test_learned_beta_starts_are_their_own_methods_and_bad_starts_exit_2(tmp_path, capsys):
    s = StudySettings(**(QUICK | {"parts": ("beta",), "beta_starts": (0.1, 0.9)}))
    learned = {(r.method, r.config["beta"]) for r in build_runs(s) if r.method.startswith("learned-beta-K")}
    assert learned == {("learned-beta-K2-T4", 0.1), ("learned-beta-K2-T4-from0.9", 0.9)}
    out = tmp_path / "study"
    assert main(["study", "--quick", "--parts", "beta", "--beta-starts", "0.9,1", "--out", str(out)]) == 2
    assert "--beta-starts must be a non-empty comma list of numbers in (0, 1)" in capsys.readouterr().err
    assert not out.exists()
