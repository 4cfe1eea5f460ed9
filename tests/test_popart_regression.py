import csv
import dataclasses
import inspect
import json
import math
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from metaopt import cli, popart
from metaopt.experiments import popart_regression as pr
from metaopt.experiments.popart_regression import _simulation as sim

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popart_regression.py"


def test_binary_code_msb_first():
    codes = pr.binary_code(torch.tensor([5, 65535, 0, 1023]), dtype=torch.float64)
    assert codes.shape == (4, 16)
    assert codes[0].tolist() == [0.0] * 13 + [1.0, 0.0, 1.0]
    assert codes[1].tolist() == [1.0] * 16
    assert codes[2].tolist() == [0.0] * 16
    assert codes[3].tolist() == [0.0] * 6 + [1.0] * 10
    # the code is the number: sum of bit * 2^(15 - position)
    values = torch.randint(0, 2**16, (100,))
    weights = 2.0 ** torch.arange(15, -1, -1, dtype=torch.float64)
    assert torch.equal((pr.binary_code(values, dtype=torch.float64) * weights).sum(-1), values.double())
    with pytest.raises(ValueError, match="targets must lie in"):
        pr.binary_code(torch.tensor([65536]))


def test_outlier_positions_and_targets():
    assert pr.outlier_positions(5000) == [1000, 2000, 3000, 4000]
    assert pr.outlier_positions(1000) == []
    assert pr.outlier_positions(1001) == [1000]
    targets = pr.make_targets(3500, torch.Generator().manual_seed(3))
    is_outlier = targets == pr.OUTLIER_TARGET
    assert is_outlier.nonzero().flatten().tolist() == [1000, 2000, 3000]
    ordinary = targets[~is_outlier]
    assert int(ordinary.min()) >= 0 and int(ordinary.max()) <= 1023
    assert len(ordinary.unique()) > 900  # uniform over 0..1023, not a constant


def test_init_matches_nn_linear_default():
    torch.manual_seed(11)
    sizes = (16, 10, 10, 10, 10, 1)
    layers = [nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    expected = [t for layer in layers for t in (layer.weight, layer.bias)]
    got = pr.init_params(torch.Generator().manual_seed(11), dtype=torch.float32)
    assert [t.shape for t in got] == [t.shape for t in expected]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e.detach())


def _batched_params(seeds, dtype=torch.float64):
    per_seed = [pr.init_params(torch.Generator().manual_seed(s), dtype=dtype) for s in range(seeds)]
    params = [torch.stack(ps) for ps in zip(*per_seed, strict=True)]
    params[-2], params[-1] = params[-2].squeeze(1), params[-1].squeeze(1)
    return params


def test_manual_gradients_match_autograd():
    params = [p.requires_grad_() for p in _batched_params(4)]
    x = pr.binary_code(torch.randint(0, 1024, (4,)), dtype=torch.float64)
    target = torch.randn(4, dtype=torch.float64)
    n, acts = sim._forward(params, x)
    loss = 0.5 * ((n - target) ** 2).sum()  # seeds are independent: sum of per-seed losses
    grads = torch.autograd.grad(loss, params)
    lr = 0.1
    stepped = sim._sgd_step([p.detach() for p in params], [a.detach() for a in acts], (n - target).detach(), lr)
    for p, g, s in zip(params, grads, stepped, strict=True):
        torch.testing.assert_close(s, p.detach() - lr * g, rtol=1e-12, atol=1e-14)


def _reference_run(spec, seed, steps, record="before", head_init="default"):
    """One seed, plain modules and autograd: the algorithm written the obvious way."""
    gen = torch.Generator().manual_seed(seed)
    init = pr.init_params(gen, dtype=torch.float64)
    targets = pr.make_targets(steps, gen)
    sizes = (16, 10, 10, 10, 10)
    body = nn.Sequential(
        *[m for i, o in zip(sizes[:-1], sizes[1:], strict=True) for m in (nn.Linear(i, o), nn.Tanh())]
    ).double()
    head = nn.Linear(10, 1).double()
    linears = [m for m in body if isinstance(m, nn.Linear)] + [head]
    with torch.no_grad():
        for layer, w, b in zip(linears, init[::2], init[1::2], strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        if head_init == "ones":
            nn.init.ones_(head.weight)
            nn.init.zeros_(head.bias)
    params = list(body.parameters()) + list(head.parameters())
    state = popart.init(1, dtype=torch.float64)
    errors = []
    for t in range(steps):
        y = targets[t : t + 1].double()
        x = pr.binary_code(targets[t : t + 1], dtype=torch.float64)
        with torch.no_grad():
            if not spec.beta:
                errors.append(float((head(body(x)).squeeze(-1) - y) ** 2))
            else:
                if record == "before":
                    errors.append(float((popart.unnormalize(state, head(body(x)).squeeze(-1)) - y) ** 2))
                new = popart.art(state, y, spec.beta)
                if spec.pop:
                    w, b = popart.pop(head.weight, head.bias, state, new)
                    head.weight.copy_(w)
                    head.bias.copy_(b)
                state, y_norm = new, popart.normalize(new, y)
                if record == "after":
                    errors.append(float((popart.unnormalize(state, head(body(x)).squeeze(-1)) - y) ** 2))
                y = y_norm
        loss = 0.5 * ((head(body(x)).squeeze(-1) - y) ** 2).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= spec.lr * g
    return torch.tensor(errors, dtype=torch.float64)


@pytest.mark.parametrize("protocol", ["paper", "reproduction"])
@pytest.mark.parametrize("method", ["sgd", "art", "popart"])
def test_simulation_matches_plain_single_seed_loop(method, protocol):
    steps = 1003  # crosses the first outlier (sample 1000)
    res = pr.run_experiment(1, steps, [method], protocol=protocol, dtype="float64", seed=5)
    proto = pr.PROTOCOLS[protocol]
    spec = res.specs[method]
    assert spec.lr == (proto.art_lr if method == "art" else pr.DEFAULT_METHODS[method].lr)
    expected = _reference_run(spec, 5, steps, record=proto.record, head_init=proto.head_init)
    torch.testing.assert_close(res.squared_errors[method][0], expected, rtol=1e-8, atol=1e-8)


def test_reproduction_records_error_after_art_on_the_current_sample():
    # First sample of seed 3, ART (no POP), head weight 1 / bias 0: by hand, in float64.
    beta = pr.DEFAULT_METHODS["art"].beta
    gen = torch.Generator().manual_seed(3)
    params = pr.init_params(gen, dtype=torch.float64, head_init="ones")
    y0 = float(pr.make_targets(1, gen)[0])
    h = pr.binary_code(torch.tensor([int(y0)]), dtype=torch.float64)[0]
    for w, b in zip(params[0:-2:2], params[1:-2:2], strict=True):
        h = torch.tanh(w @ h + b)
    n0 = float(h.sum())  # head: weight 1, bias 0
    mu1 = beta * y0  # mu' = (1 - beta) 0 + beta Y
    sigma1 = math.sqrt((1 - beta) * (1 + beta * y0**2))  # sigma'^2 = (1 - beta)(1 + beta Y^2)
    after, before = (sigma1 * n0 + mu1 - y0) ** 2, (n0 - y0) ** 2  # statistics after / before ART on Y_0
    assert abs(after - before) > 1.0  # the two orders really differ here

    for protocol, expected in (("reproduction", after), ("paper", before)):
        res = pr.run_experiment(1, 1, "art", protocol=protocol, head_init="ones", dtype="float64", seed=3)
        assert res.squared_errors["art"][0, 0].item() == pytest.approx(expected, rel=1e-12)
    # with POP the output is preserved, so both orders record the same error (up to rounding)
    rec = {r: pr.run_experiment(1, 50, "popart", record=r, dtype="float64", seed=3) for r in pr.RECORD_CHOICES}
    torch.testing.assert_close(rec["after"].squared_errors["popart"], rec["before"].squared_errors["popart"],
                               rtol=1e-9, atol=1e-9)


def test_head_init_ones_keeps_body_and_data():
    a_gen, b_gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    default = pr.init_params(a_gen, dtype=torch.float64)
    ones = pr.init_params(b_gen, dtype=torch.float64, head_init="ones")
    for d, o in zip(default[:-2], ones[:-2], strict=True):
        assert torch.equal(d, o)
    assert ones[-2].tolist() == [[1.0] * 10] and ones[-1].tolist() == [0.0]
    assert not torch.equal(default[-2], ones[-2])
    assert torch.equal(pr.make_targets(20, a_gen), pr.make_targets(20, b_gen))  # same draws afterwards
    with pytest.raises(ValueError, match=r"head_init must be one of \('default', 'ones'\), got 'zeros'"):
        pr.init_params(a_gen, head_init="zeros")


@pytest.mark.parametrize("protocol", ["paper", "reproduction"])
def test_protocols_tiny_budget(protocol, tmp_path):
    res = pr.run_experiment(2, 300, protocol=protocol, seed=1)
    assert res.protocol_name == protocol and res.protocol == pr.PROTOCOLS[protocol]
    assert res.specs["art"].lr == pr.PROTOCOLS[protocol].art_lr
    for m in res.methods:
        assert bool(torch.isfinite(res.squared_errors[m]).all())
    summary = json.loads(pr.write_outputs(res, tmp_path, plot=False)["json"].read_text())
    assert summary["protocol"] == {"name": protocol, **pr.PROTOCOLS[protocol]._asdict()}
    assert f"protocol {protocol}" in pr.format_table(res)
    # a single override makes the protocol "custom"
    custom = pr.run_experiment(1, 3, "sgd", protocol=protocol, record="after" if protocol == "paper" else "before")
    assert custom.protocol_name == "custom"


def test_vectorized_seeds_equal_single_seed_runs():
    batch = pr.run_experiment(3, 300, dtype="float64", seed=7)
    for i in range(3):
        alone = pr.run_experiment(1, 300, dtype="float64", seed=7 + i)
        for m in batch.methods:
            torch.testing.assert_close(batch.squared_errors[m][i], alone.squared_errors[m][0], rtol=1e-12, atol=1e-9)
    # and the seeds really differ
    assert not torch.allclose(batch.squared_errors["sgd"][0], batch.squared_errors["sgd"][1])


def test_moving_average_matches_naive_window():
    x = torch.rand(2, 37, dtype=torch.float64)
    got = pr.moving_average(x, 10)
    for t in range(37):
        torch.testing.assert_close(got[:, t], x[:, max(0, t - 9) : t + 1].mean(-1))


def test_popart_beats_sgd_after_outliers():
    res = pr.run_experiment(3, 2000, "sgd,popart", seed=0)
    sgd, pop = res.final("sgd")["median"], res.final("popart")["median"]
    assert math.isfinite(sgd) and math.isfinite(pop)
    assert pop * 3 < sgd, (pop, sgd)
    # every method shows the outlier spike in its curve (error ~65k smoothed over 10 samples)
    for m in res.methods:
        assert float(res.quantiles(m)["median"][1000]) > 3000


def test_outputs_have_columns_and_finite_values(tmp_path):
    res = pr.run_experiment(2, 50, "sgd,popart", seed=1)
    paths = pr.write_outputs(res, tmp_path / "out", plot=True)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "method", "median", "p10", "p90"]
    assert len(rows) == 2 * 50
    assert {r["method"] for r in rows} == {"sgd", "popart"}
    for r in rows:
        lo, mid, hi = float(r["p10"]), float(r["median"]), float(r["p90"])
        assert all(math.isfinite(v) for v in (lo, mid, hi)) and lo <= mid <= hi
    summary = json.loads(paths["json"].read_text())
    assert summary["seeds"] == 2 and summary["steps"] == 50
    assert summary["methods"]["popart"]["final_rmse"]["median"] == pytest.approx(res.final("popart")["median"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curves.csv", "fig1a.png", "summary.json"]


@pytest.fixture
def only_this_subcommand(monkeypatch):
    """Build the CLI with just the real ``popart-regression`` entry, so other subcommands cannot break these tests."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"popart-regression": cli.SUBCOMMANDS["popart-regression"]})


@pytest.mark.usefixtures("only_this_subcommand")
def test_cli_runs_and_writes_files(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["popart-regression", "--seeds", "2", "--steps", "200", "--out", str(out), "--no-plot"]) == 0
    assert (out / "curves.csv").exists() and (out / "summary.json").exists()
    assert not (out / "fig1a.png").exists()
    printed = capsys.readouterr().out
    assert "popart" in printed and "median" in printed and "protocol paper" in printed


@pytest.mark.usefixtures("only_this_subcommand")
def test_cli_protocol_and_overrides(tmp_path, capsys):
    out = tmp_path / "repro"
    argv = ["popart-regression", "--seeds", "2", "--steps", "100", "--out", str(out), "--no-plot"]
    assert cli.main([*argv, "--protocol", "reproduction"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == {"name": "reproduction", "record": "after", "head_init": "ones", "art_lr": 10**-3.5}
    assert summary["methods"]["art"]["lr"] == 10**-3.5
    assert cli.main([*argv, "--protocol", "reproduction", "--head-init", "default", "--art-lr", "0.001",
                     "--overwrite"]) == 0  # the same --out: replacing its results is explicit
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == {"name": "custom", "record": "after", "head_init": "default", "art_lr": 0.001}
    assert "protocol custom: record after ART, head init default" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seeds", "0", "integer >= 1, got 0"),
        ("--steps", "-3", "integer >= 1, got -3"),
        ("--steps", "ten", "'ten'"),
        ("--methods", "sgd,adam", "adam"),
        ("--art-lr", "-1", "positive"),
        ("--dtype", "float16", "float16"),
        ("--protocol", "rlax", "rlax"),
        ("--record", "later", "later"),
        ("--head-init", "zeros", "zeros"),
    ],
)
@pytest.mark.usefixtures("only_this_subcommand")
def test_cli_rejects_bad_input_without_writing(tmp_path, capsys, flag, value, message):
    out = tmp_path / "never"
    try:
        code = cli.main(["popart-regression", flag, value, "--out", str(out)])
    except SystemExit as exc:  # argparse: a value that does not parse or is not a choice
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0] and message in errors[0], err
    assert not out.exists()


@pytest.mark.usefixtures("only_this_subcommand")
def test_cli_rejects_repeated_methods_and_a_file_as_out(tmp_path, capsys):
    assert cli.main(["popart-regression", "--methods", "popart,popart", "--out", str(tmp_path / "x")]) == 2
    assert "--methods must not repeat a method" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli.main(["popart-regression", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "--out must be a directory path" in capsys.readouterr().err


def test_cli_flags_come_from_the_settings_dataclass(capsys):
    """One flag per Settings field, help from the field docs with the default stated once."""
    with pytest.raises(SystemExit):
        cli.main(["popart-regression", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(pr.Settings):
        assert "--" + f.name.replace("_", "-") in text
    assert "--no-plot" in text and text.count("(default: 5000)") == 1 and "%(default)" not in text
    assert "samples per run" in text and "(default: sgd,art,popart)" in text


def test_settings_defaults_are_run_experiment_defaults():
    params = inspect.signature(pr.run_experiment).parameters
    settings = pr.Settings()
    for name, value in settings.experiment().items():
        assert params[name].default == value, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 0}, "seeds must be an integer >= 1, got 0"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"methods": ["sgd", "nope"]}, "unknown method"),
        ({"methods": "popart,popart"}, "repeat"),
        ({"methods": []}, "non-empty"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"art_lr": 0.0}, "art_lr must be positive"),
        ({"window": 0}, "window must be an integer >= 1"),
        ({"protocol": "paperr"}, r"protocol must be one of \('paper', 'reproduction'\), got 'paperr'"),
        ({"record": "later"}, r"record must be one of \('before', 'after'\), got 'later'"),
        ({"head_init": "zeros"}, r"head_init must be one of \('default', 'ones'\), got 'zeros'"),
    ],
)
def test_run_experiment_validates_eagerly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pr.run_experiment(**{"seeds": 1, "steps": 1, **kwargs})


def test_art_lr_override_applies_to_art_only():
    res = pr.run_experiment(1, 5, art_lr=1e-3)
    assert res.specs["art"].lr == 1e-3
    assert res.specs["popart"].lr == pr.DEFAULT_METHODS["popart"].lr


@pytest.mark.parametrize("protocol", ["paper", "reproduction"])
def test_example_runs_with_tiny_budget(capsys, protocol):
    ns = runpy.run_path(str(EXAMPLE), run_name="example")
    ns["main"](["--seeds", "2", "--steps", "60", "--methods", "sgd,art", "--protocol", protocol])
    printed = capsys.readouterr().out
    assert "final RMSE at sample 59" in printed and "art" in printed and f"protocol {protocol}" in printed
    lr = {"paper": "0.00316", "reproduction": "0.000316"}[protocol]
    assert any(line.startswith("art") and lr in line for line in printed.splitlines())
