"""Without matplotlib, every command that draws plots stops before any work (exit 2, naming --no-plot)."""

from __future__ import annotations

import sys

import pytest

from metaopt.cli import main

# (command and its tiny-budget flags); each draws PNG plots unless --no-plot.
PLOTTING = {
    "maml-rl": ["maml-rl", "--preset", "smoke", "--no-progress"],
    "study": ["study", "--quick", "--parts", "scale"],
    "popart-regression": ["popart-regression", "--seeds", "2", "--steps", "100"],
    "estimator-study": ["estimator-study", "--quick"],
}


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` fails as it does where the ``plot`` extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError


@pytest.mark.parametrize("command", sorted(PLOTTING))
def test_missing_matplotlib_stops_before_any_work(command, tmp_path, capsys, no_matplotlib):
    out = tmp_path / "out"
    assert main([*PLOTTING[command], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "matplotlib" in err and "--no-plot" in err, err
    assert "metaopt-torch[plot]" in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # nothing written, nothing trained


def test_maml_rl_runs_without_matplotlib_with_no_plot(tmp_path, no_matplotlib):
    out = tmp_path / "run"
    assert main([*PLOTTING["maml-rl"], "--no-plot", "--out", str(out)]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"metrics.json", "config.json", "checkpoint.pt"} <= written and not any(n.endswith(".png") for n in written)


def test_study_runs_without_matplotlib_with_no_plot(tmp_path, no_matplotlib, capsys):
    out = tmp_path / "study"
    argv = [*PLOTTING["study"], "--workers", "1", "--seeds", "1", "--lrs", "0.1", "--scales", "1", "--no-plot"]
    assert main([*argv, "--out", str(out)]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"study.json", "study.md"} <= written and not any(n.endswith(".png") for n in written), written
