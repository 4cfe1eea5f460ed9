"""`metaopt maml-rl --tensorboard` writes event files whose scalars match metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from metaopt import cli

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is a dev dependency"
)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tag_for(column: str, tags: list[str]) -> str:
    """The tag logging ``column`` (tags may carry a namespace: ``train/pre_return`` for ``train_pre_return``)."""
    found = [t for t in tags if column in (t, t.replace("/", "_"), t.split("/", 1)[-1])]  # not grad_logit_beta for beta
    assert len(found) == 1, f"expected one tensorboard tag for metrics.csv column {column!r}, got {found} in {tags}"
    return found[0]


def test_maml_rl_tensorboard_scalars_match_metrics_csv(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["maml-rl", "--preset", "smoke", "--tensorboard", "--out", str(out), "--no-progress",
                     "--no-plot"])
    assert code == 0, capsys.readouterr().err
    assert list((out / "tb").glob("events.out.tfevents.*")), "no event file under OUT/tb"
    scalars = _scalars(out / "tb")
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]  # the smoke preset's 3 iterations
    for column in ("train_pre_return", "train_post_return", "beta", "lr"):
        logged = scalars[_tag_for(column, list(scalars))]
        assert [s for s, _ in logged] == [1, 2, 3], column
        for (_, value), row in zip(logged, rows, strict=True):
            assert value == pytest.approx(float(row[column]), rel=1e-6, abs=1e-6), column
    # evaluations (every 2 iterations and at the end) are logged at their iteration too
    with (out / "eval.csv").open() as f:
        evals = list(csv.DictReader(f))
    logged = dict(scalars[_tag_for("test_post_return", list(scalars))])
    assert sorted(logged) == [int(r["iteration"]) for r in evals] == [2, 3]
    for r in evals:
        assert logged[int(r["iteration"])] == pytest.approx(float(r["test_post_return"]), rel=1e-6)


def test_maml_rl_wandb_logs_through_the_same_interface(tmp_path, monkeypatch, capsys):
    # A stand-in for the wandb package (not installed here): records init arguments and logged steps.
    import sys
    import types

    calls = {"log": [], "finished": 0}

    class Run:
        def log(self, metrics, step):
            calls["log"].append((step, dict(metrics)))

        def finish(self):
            calls["finished"] += 1

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, __name__="wandb"))
    out = tmp_path / "run"
    code = cli.main(["maml-rl", "--preset", "smoke", "--wandb", "proj", "--wandb-mode", "offline", "--out", str(out),
                     "--no-progress", "--no-plot"])
    assert code == 0, capsys.readouterr().err
    assert calls["init"]["project"] == "proj" and calls["init"]["mode"] == "offline"
    assert calls["init"]["config"]["popart"] is True and calls["finished"] == 1
    assert [s for s, _ in calls["log"]] == [1, 2, 3]
    assert {"train/pre_return", "meta/beta", "meta/lr"} <= set(calls["log"][0][1])
    assert "eval/test_post_return" in calls["log"][1][1]
