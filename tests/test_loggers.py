"""metaopt.loggers: CSV, TensorBoard and W&B backends behind one Logger interface."""

from __future__ import annotations

import csv
import sys
import types

import pytest
import torch

from metaopt.loggers import CSVLogger, Logger, MultiLogger, TensorBoardLogger, WandbLogger, require


def _read(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_csv_logger_widens_the_header_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "sub" / "m.csv"
    with CSVLogger(path) as log:
        assert isinstance(log, Logger)
        log.log({"train/loss": 0.5}, step=1)
        assert _read(path) == [{"step": "1", "train/loss": "0.5"}]  # on disk after every call
        log.log({"train/loss": torch.tensor(0.25), "meta/beta": 0.1}, step=2)
        log.log({"meta/beta": 0.2}, step=3)
    assert _read(path) == [
        {"step": "1", "train/loss": "0.5", "meta/beta": ""},
        {"step": "2", "train/loss": "0.25", "meta/beta": "0.1"},
        {"step": "3", "train/loss": "", "meta/beta": "0.2"},
    ]


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_bad_steps_are_rejected_with_the_value(tmp_path, step):
    with pytest.raises(ValueError, match=f"step must be an int >= 0, got {step!r}"):
        CSVLogger(tmp_path / "m.csv").log({"a": 1.0}, step=step)


def test_non_numeric_metrics_are_rejected_with_the_name(tmp_path):
    log = CSVLogger(tmp_path / "m.csv")
    with pytest.raises(TypeError, match="metric 'x' must be a real number, got str 'high'"):
        log.log({"x": "high"}, step=0)
    with pytest.raises(TypeError, match="metric 'v' must be a real number"):
        log.log({"v": torch.ones(2)}, step=0)


def test_tensorboard_logger_writes_scalars(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with TensorBoardLogger(tmp_path / "tb") as log:
        log.log({"train/loss": 1.5, "meta/beta": 0.1}, step=0)
        log.log({"train/loss": 0.5}, step=7)
    acc = ea.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["meta/beta", "train/loss"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(0, 1.5), (7, 0.5)]


def test_tensorboard_logger_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'metaopt-torch\[tensorboard\]'"):
        TensorBoardLogger(tmp_path / "tb")


class _FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_logger_drives_a_run(monkeypatch):
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: _FakeRun(**kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with WandbLogger("metaopt", name="TabularMDP__maml__1", config={"tasks": 40}, mode="offline") as log:
        log.log({"train/loss": torch.tensor(2.0)}, step=3)
    run = log.run
    assert run.init == {"project": "metaopt", "name": "TabularMDP__maml__1", "config": {"tasks": 40},
                        "mode": "offline"}
    assert run.logged == [(3, {"train/loss": 2.0})] and run.finished


def test_wandb_logger_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"WandbLogger needs the optional package 'wandb'.*metaopt-torch\[wandb\]"):
        WandbLogger("metaopt")
    with pytest.raises(ValueError, match="mode must be None, 'online', 'offline' or 'disabled', got 'cloud'"):
        WandbLogger("metaopt", mode="cloud")


class _Failing:
    def __init__(self):
        self.calls = []

    def log(self, metrics, step):
        self.calls.append((step, dict(metrics)))

    def close(self):
        raise RuntimeError("disk full")


def test_multi_logger_fans_out_and_closes_every_logger(tmp_path):
    failing, csv_logger = _Failing(), CSVLogger(tmp_path / "m.csv")
    closed = []
    csv_logger.close = lambda: closed.append(True)
    log = MultiLogger([failing, csv_logger])
    log.log({"a": 1.0}, step=1)
    assert failing.calls == [(1, {"a": 1.0})] and _read(tmp_path / "m.csv") == [{"step": "1", "a": "1.0"}]
    with pytest.raises(RuntimeError, match="disk full"):
        log.close()
    assert closed == [True]  # closed although the first logger failed
    with pytest.raises(TypeError, match=r"loggers\[0\] must have log\(metrics, step\) and close\(\), got int"):
        MultiLogger([3])


def test_require_checks_a_backend_without_creating_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    require("csv")
    require("tensorboard")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError,
                       match=r"the 'wandb' logger needs the optional package 'wandb'.*metaopt-torch\[wandb\]"):
        require("wandb")
    with pytest.raises(ValueError, match=r"backend must be one of \['csv', 'tensorboard', 'wandb'\], got 'mlflow'"):
        require("mlflow")
