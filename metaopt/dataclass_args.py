"""Command-line parsing for a ``@dataclass`` of arguments (the examples' cleanrl-style ``Args``).

Each field becomes ``--field-name`` with the field's default and type; the help text is the string literal
written right below the field (its "docstring"), as in::

    @dataclass
    class Args:
        seed: int = 0
        \"\"\"seed of everything\"\"\"
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["field_docs", "parse_dataclass"]

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of the dataclass ``cls`` to the string literal right below it (whitespace collapsed)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source available (e.g. defined in an interactive session)
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:], strict=False):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def parse_dataclass(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> T:
    """Parse command-line flags into an instance of the dataclass ``cls``.

    Args:
        cls: A dataclass whose fields all have defaults of type bool, int, float or str.
        argv: Arguments (default: ``sys.argv[1:]``).
        description: The parser's description.
        choices: Optional allowed values per field name.

    Returns:
        ``cls(**parsed)``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls must be a dataclass, got {cls!r}")
    docs, choices = field_docs(cls), choices or {}
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag, default = f"--{f.name.replace('_', '-')}", f.default
        help_text = f"{docs.get(f.name, '')} (default: {default})".strip()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, choices=choices.get(f.name),
                                help=help_text)
    return cls(**vars(parser.parse_args(argv)))
