from __future__ import annotations

from dataclasses import dataclass

import pytest

from metaopt.dataclass_args import field_docs, parse_dataclass


@dataclass
class Args:
    seed: int = 0
    """seed of
    everything"""
    lr: float = 0.1
    """learning rate"""
    name: str = "x"
    plot: bool = True
    """draw the plot"""


def test_field_docs_read_the_literal_below_each_field():
    assert field_docs(Args) == {"seed": "seed of everything", "lr": "learning rate", "plot": "draw the plot"}


def test_parse_types_defaults_and_bools():
    a = parse_dataclass(Args, ["--seed", "3", "--lr", "1e-3", "--no-plot"])
    assert a == Args(seed=3, lr=1e-3, name="x", plot=False)
    assert parse_dataclass(Args, []) == Args()


def test_bad_values_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse_dataclass(Args, ["--seed", "abc"])
    assert "argument --seed: invalid int value: 'abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_dataclass(Args, ["--name", "y"], choices={"name": ("x", "z")})
    assert "argument --name: invalid choice: 'y'" in capsys.readouterr().err
    with pytest.raises(TypeError, match="cls must be a dataclass"):
        parse_dataclass(int, [])
