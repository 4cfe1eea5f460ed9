from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Lists:
    sizes: tuple[int, ...] = (10, 100)
    """numbers N"""
    rates: tuple[float, ...] = (0.5,)
    names: tuple[str, ...] = field(default=("a",), metadata={"choices": ("a", "b")})


def test_comma_lists_convert_each_item_to_the_element_type():
    assert parse_dataclass(Lists, []) == Lists()
    got = parse_dataclass(Lists, ["--sizes", "1, 20,300", "--rates", "1e-3,2", "--names", "b,a"])
    assert got == Lists(sizes=(1, 20, 300), rates=(1e-3, 2.0), names=("b", "a"))
    assert all(type(x) is int for x in got.sizes) and all(type(x) is float for x in got.rates)
    assert parse_dataclass(Lists, ["--sizes", "none"]).sizes == ()


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "10,x"], "argument --sizes: expected a comma list of int values (or 'none'), got '10,x'"),
    (["--sizes", "1.5"], "argument --sizes: expected a comma list of int values (or 'none'), got '1.5'"),
    (["--rates", "0.1,fast"], "argument --rates: expected a comma list of float values (or 'none'), got '0.1,fast'"),
    (["--names", "a,c"], "argument --names: expected a comma list of a,b (or 'none'), got 'a,c' (unknown: ['c'])"),
])
def test_bad_comma_lists_name_the_flag_and_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_dataclass(Lists, argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unsupported_tuple_field_types_are_refused():
    @dataclass
    class Bad:
        pairs: tuple[int, int] = (1, 2)

    with pytest.raises(TypeError, match=r"tuple fields must be tuple\[str, ...\], tuple\[int, ...\] or"):
        parse_dataclass(Bad, [])
