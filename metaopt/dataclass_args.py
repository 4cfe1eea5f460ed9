r"""Command-line flags generated from a ``@dataclass`` (the examples' cleanrl-style ``Args``, the CLIs' configs).

Each field becomes ``--field-name`` with the field's type; its help is the field's documentation, read either
from the string literal written right below the field, as in::

    @dataclass
    class Args:
        seed: int = 0
        \"\"\"seed of everything\"\"\"

or from the class docstring's Google-style ``Attributes:`` section. Defaults are stated once, in the dataclass;
the help prints them. Allowed values come from ``field(metadata={"choices": (...)})`` or ``choices=``.

Supported field types: ``bool`` (``--flag/--no-flag``), ``int``, ``float``, ``str``, ``X | None`` (the word
``none`` gives ``None``) and ``tuple[X, ...]`` with ``X`` one of ``str``, ``int``, ``float`` (a comma list, each
item converted to ``X``; ``none`` gives ``()``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "ArgumentParser",
    "field_docs",
    "add_dataclass_arguments",
    "dataclass_overrides",
    "dataclass_flags",
    "dataclass_from_args",
    "flag_name",
    "parse_dataclass",
    "format_value",
]

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose errors are one line, ``prog: error: message (see prog --help)``.

    argparse prints the whole usage block before the error; a command line that a script or a person got wrong
    needs the one line that names the argument. Subparsers made with ``add_subparsers`` inherit the class.
    Exit status 2, as argparse's.
    """

    def error(self, message: str) -> typing.NoReturn:
        """Print one line naming the problem and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field docs from the class docstring's ``Attributes:`` section (continuation lines joined)."""
    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not m:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in m.group(1).splitlines():
        item = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if item:
            current = item.group(1)
            out[current] = item.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of the dataclass ``cls`` to its documentation (whitespace collapsed).

    The string literal right below a field wins; otherwise the ``Attributes:`` section of the docstring.
    """
    docs = _attribute_docs(cls)
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source available (e.g. defined in an interactive session)
        return docs
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:], strict=False):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def format_value(value: Any) -> str:
    """A value as typed on the command line: tuples as comma lists, ``None``/``()`` as ``none``."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _converter(tp: Any, choices: Sequence[Any] | None) -> tuple[Any, bool]:
    """``(argparse type, is_bool)`` for a resolved field type."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if tp is bool:
        return None, True
    if typing.get_origin(tp) is tuple:
        item_type = args[0] if args else str
        if item_type not in (str, int, float) or len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"tuple fields must be tuple[str, ...], tuple[int, ...] or tuple[float, ...], got {tp}")

        def comma_list(value: str) -> tuple[Any, ...]:
            words = tuple(x.strip() for x in value.split(",") if x.strip())
            words = () if words == ("none",) else words
            try:
                items = tuple(item_type(x) for x in words)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a comma list of {item_type.__name__} values "
                                                 f"(or 'none'), got {value!r}") from None
            bad = [x for x in items if choices is not None and x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"expected a comma list of {','.join(map(str, choices or ()))} "
                                                 f"(or 'none'), got {value!r} (unknown: {bad})")
            return items

        return comma_list, False
    base = tp if tp in (int, float, str) else str

    def convert(value: str) -> Any:
        if optional and value.lower() == "none":
            return None
        try:
            return base(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {base.__name__} value: {value!r}") from None

    convert.__name__ = base.__name__
    return convert, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Sequence[str] = (),
    choices: Mapping[str, Sequence[Any]] | None = None,
    overridable: bool = False,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Add one flag per field of ``cls`` to ``parser``.

    Args:
        parser: The parser (or argument group).
        cls: The dataclass.
        exclude: Fields to leave out.
        choices: Allowed values per field (besides ``metadata={"choices": ...}``).
        overridable: Every flag defaults to ``None`` ("not given"), for callers that layer explicit flags over
            presets (see :func:`dataclass_overrides`); the help still shows the dataclass default.
        presets: Preset name -> the field values it sets; each value that differs from the default is shown
            after it in the help (``(default: 40; --quick: 4)``).

    Returns:
        Field name -> flag (``"--field-name"``), e.g. to name flags in validation messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls must be a dataclass, got {cls!r}")
    docs, hints, flags = field_docs(cls), typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = flag_name(f.name)
        flags[f.name] = flag
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        allowed = (choices or {}).get(f.name, f.metadata.get("choices"))
        convert, is_bool = _converter(hints[f.name], allowed)
        shown = [f"default: {format_value(default)}"] + [
            f"--{name}: {format_value(values[f.name])}" for name, values in (presets or {}).items()
            if f.name in values and values[f.name] != default]
        help_text = f"{docs.get(f.name, '')} ({'; '.join(shown)})".strip().replace("%", "%%")
        kw: dict[str, Any] = {"default": None if overridable else default, "help": help_text}
        if is_bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(hints[f.name]) is tuple:
            item = typing.get_args(hints[f.name])[0]
            parser.add_argument(flag, type=convert, metavar="A,B" if item is str else "N[,N...]", **kw)
        else:
            parser.add_argument(flag, type=convert, choices=allowed, **kw)
    return flags


def flag_name(field: str) -> str:
    """The command-line flag of a dataclass field: ``task_counts`` -> ``--task-counts``."""
    return "--" + field.replace("_", "-")


def dataclass_flags(cls: type) -> dict[str, str]:
    """Field name -> flag for every field of ``cls``, as :func:`add_dataclass_arguments` names them."""
    return {f.name: flag_name(f.name) for f in dataclasses.fields(cls)}


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """An instance of ``cls`` from the parsed flags of all its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def dataclass_overrides(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given explicitly on the command line (flags added with ``overridable=True``)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def parse_dataclass(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> T:
    """Parse command-line flags into an instance of the dataclass ``cls``.

    Args:
        cls: A dataclass whose fields all have defaults of the supported types.
        argv: Arguments (default: ``sys.argv[1:]``).
        description: The parser's description.
        choices: Optional allowed values per field name.

    Returns:
        ``cls(**parsed)``.
    """
    parser = ArgumentParser(description=description)  # add_dataclass_arguments checks cls
    add_dataclass_arguments(parser, cls, choices=choices)
    return dataclass_from_args(cls, parser.parse_args(argv))
