"""The verification catalogue, ``metaopt verify`` and the verification examples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaopt.cli import main
from metaopt.engines import ENGINES, InnerLoop
from metaopt.verify import catalogue, check_gradients, checks_toys
from metaopt.verify.catalogue import CHECK_NAMES, CheckResult, run_catalogue
from metaopt.verify.cli import exit_code, format_table, to_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("verify_*.py"))


@pytest.fixture(scope="module")
def rows(catalogue_rows) -> list[CheckResult]:
    return catalogue_rows


def _find(rows, check, engine, quantity):
    found = [r for r in rows if r.check == check and r.engine == engine and r.quantity == quantity]
    assert len(found) == 1, (check, engine, quantity, found)
    return found[0]


# ------------------------------------------------------------------------------------------- catalogue
def test_every_check_passes_on_every_engine(rows):
    failed = [r for r in rows if not r.passed]
    assert not failed, format_table(failed)
    assert [c for c in CHECK_NAMES if not any(r.check == c for r in rows)] == []
    for check in ("torchopt-toy", "higher-toy", "darts", "popart"):
        assert {r.engine for r in rows if r.check == check} >= set(ENGINES), check
    assert all(math.isfinite(r.rel_error) for r in rows)


def test_torchopt_toy_reports_the_analytic_values(rows):
    for engine in ENGINES:
        dx = _find(rows, "torchopt-toy", engine, "dL/dx vs analytic")
        dlr = _find(rows, "torchopt-toy", engine, "dL/dlr vs analytic")
        assert dx.reference == -28.0 and dlr.reference == -16.0
        assert abs(dx.autograd + 28.0) <= 1e-10 and abs(dlr.autograd + 16.0) <= 1e-10
        fd = _find(rows, "torchopt-toy", engine, "dL/dx vs FD")
        assert abs(fd.reference + 28.0) <= 1e-6  # the finite difference is independent of autograd
    raw = _find(rows, "torchopt-toy", "torchopt-raw", "dL/dx (MetaSGD) vs analytic")
    assert raw.reference == -28.0 and raw.passed


def test_higher_toy_reports_the_published_values(rows):
    for engine in ENGINES:
        loss = _find(rows, "higher-toy", engine, "meta-loss vs published")
        grad = _find(rows, "higher-toy", engine, "dmeta/dw0 vs published")
        assert loss.reference == 0.011928 and grad.reference == -0.005311
        assert round(loss.autograd, 6) == 0.011928 and round(grad.autograd, 6) == -0.005311
        assert loss.tolerance <= 1e-4 and grad.tolerance <= 1e-4
    raw = _find(rows, "higher-toy", "higher-raw", "dmeta/dw0 (copy_initial_weights=True)")
    assert raw.passed and raw.autograd == 0.0 and raw.reference == 0.0 and "no gradient" in raw.note


def test_darts_rows_and_informational_first_order(rows):
    for engine in ENGINES:
        hvp = _find(rows, "darts", engine, "dLval/dalpha vs DARTS FD-HVP")
        assert hvp.tolerance <= 1e-6 and hvp.rel_error <= 1e-6
        first = _find(rows, "darts", engine, "first-order (xi=0) vs exact")
        assert first.rel_error > 0.05  # the second-order term matters on this problem
        assert math.isinf(first.tolerance) and "informational" in first.note


def test_popart_and_prop3_rows(rows):
    for steps in (1, 3):
        for engine in ENGINES:
            for q in ("log_lr", "logit_beta"):
                assert _find(rows, "popart", engine, f"K={steps} d/d{q} vs FD").tolerance == 1e-6
        for engine in ENGINES[1:]:
            for q in ("log_lr", "logit_beta", "theta0"):
                assert _find(rows, "popart", engine, f"K={steps} d/d{q} vs func").tolerance == 1e-8
    prop3 = [r for r in rows if r.check == "prop3"]
    assert len(prop3) == 2 and all(r.rel_error <= 1e-10 for r in prop3)
    assert "150 steps" in prop3[0].note


def test_an_engine_bug_fails_the_toy(monkeypatch):
    # A first-order inner loop drops the second derivative: dL/dx becomes 2 a1 x = -12, not -28.
    monkeypatch.setattr(checks_toys, "TOY_INNER", InnerLoop(lambda p, x, s: p["a"] * x**2, first_order=True))
    bad = {r.quantity: r for r in catalogue.check_torchopt_toy(["func"])}
    assert not bad["dL/dx vs analytic"].passed and abs(bad["dL/dx vs analytic"].autograd + 12) < 1e-9
    assert not bad["dL/dx vs FD"].passed  # the finite difference still sees -28
    assert exit_code(list(bad.values())) == 1


def test_run_catalogue_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"checks: unknown \['maml'\]; allowed: \['torchopt-toy'"):
        run_catalogue(["maml"])
    with pytest.raises(ValueError, match=r"engines: unknown \['jax'\]; allowed: \['func', 'higher', 'torchopt'\]"):
        run_catalogue(["prop3"], ["jax"])


# ------------------------------------------------------------------------------------- broken objective
class WrongSquare(torch.autograd.Function):
    """x^2 with a wrong backward (x instead of 2x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x


def _broken_check(engines):
    x = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    report = check_gradients(lambda: WrongSquare.apply(x).sum(), {"x": x})
    return [catalogue._row("broken", "-", c.name, c.autograd, c.reference, c.tolerance) for c in report.checks]


def test_check_gradients_catches_a_wrong_backward():
    x = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    report = check_gradients(lambda: WrongSquare.apply(x).sum(), {"x": x})
    assert not report.passed and abs(report["x"].rel_error - 0.5) < 1e-6
    good = check_gradients(lambda: (x**2).sum(), {"x": x})
    assert good.passed


def test_exit_code_and_table_with_a_failing_row(monkeypatch, capsys):
    ok = CheckResult("c", "func", "q", 1.0, 1.0, 0.0, 1e-6, True)
    nan = CheckResult("c", "func", "q", math.nan, 1.0, math.nan, 1e-6, math.nan <= 1e-6)
    assert exit_code([ok]) == 0 and exit_code([ok, nan]) == 1
    assert to_json([nan])["results"][0]["rel_error"] is None
    # End to end: a check built on the wrong backward makes `metaopt verify` exit 1 and print NO.
    monkeypatch.setitem(catalogue.CHECKS, "prop3", _broken_check)
    assert main(["verify", "--checks", "prop3"]) == 1
    out = capsys.readouterr().out
    assert "NO" in out and "0/1 rows passed; FAILED: 1" in out


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_prints_the_table(capsys):
    assert main(["verify", "--checks", "torchopt-toy,higher-toy", "--engines", "func"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["check", "engine", "quantity", "autograd", "reference", "rel.err", "tol", "pass"]
    line = next(s for s in out.splitlines() if "dL/dx vs analytic" in s)
    assert line.split()[:2] == ["torchopt-toy", "func"] and "-28" in line and line.endswith("yes")
    assert "8/8 rows passed" in out


def test_cli_json_has_all_rows(rows, capsys, tmp_path):
    out_file = tmp_path / "sub" / "verify.json"
    args = ["verify", "--checks", "torchopt-toy,darts", "--engines", "func,torchopt", "--json", "--out", str(out_file)]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    engines = ("func", "torchopt", "torchopt-raw")
    expected = [r for r in rows if r.check in ("torchopt-toy", "darts") and r.engine in engines]
    assert [(r["check"], r["engine"], r["quantity"]) for r in data["results"]] == [
        (r.check, r.engine, r.quantity) for r in expected
    ]
    assert data["summary"] == {"rows": len(expected), "passed": len(expected), "failed": 0, "all_passed": True}
    first_order = [r for r in data["results"] if r["quantity"].startswith("first-order")]
    assert first_order and all(r["tolerance"] is None and r["passed"] for r in first_order)
    assert json.loads(out_file.read_text()) == data


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checks", "torchopt-toy,maml"], "argument --checks: unknown check 'maml'"),
        (["--checks", ","], "argument --checks: expected a comma-separated list of checks"),
        (["--engines", "func,jax"], "argument --engines: unknown engine 'jax'"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["verify", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "unknown" in message:
        assert "allowed: " in err


def test_cli_names_a_missing_engine_library(monkeypatch, capsys):
    monkeypatch.setattr("metaopt.verify.cli.available_engines", lambda: ("func",))
    assert main(["verify", "--checks", "prop3", "--engines", "higher"]) == 2
    assert "argument --engines: ['higher'] not installed" in capsys.readouterr().err


def test_console_entry_point_exit_status():
    proc = subprocess.run([sys.executable, "-m", "metaopt.cli", "verify", "--checks", "torchopt-toy", "--engines",
                           "func"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4/4 rows passed" in proc.stdout


# ------------------------------------------------------------------------------------------- examples
def test_all_four_examples_exist():
    assert [p.name for p in EXAMPLES] == [
        "verify_darts.py", "verify_higher_toy.py", "verify_popart_meta_gradients.py", "verify_torchopt_toy.py",
    ]


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISMATCH" not in proc.stdout and "FAILED" not in proc.stdout
