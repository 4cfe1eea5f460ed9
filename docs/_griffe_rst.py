r"""A griffe extension: render metaopt's reST markup inside Google-style docstrings as Markdown.

metaopt's docstrings follow PyTorch's habits: ``:math:`...```, ``.. math::`` blocks, ``.. note::`` and
cross-reference roles (``:func:`art```, ``:class:`~metaopt.popart.PopArtState```). mkdocstrings reads
Markdown, so before the docstrings are parsed this extension rewrites

* ``:math:`x``` -> ``\(x\)`` and ``.. math::`` blocks -> ``\[ ... \]`` (rendered by MathJax through
  ``pymdownx.arithmatex``);
* ``.. note::`` -> a ``!!! note`` admonition;
* ``:func:`name``` and the other roles -> an *optional* autorefs link when ``name`` resolves to a public
  metaopt object: a link where that object is rendered in the API reference, quiet inline code where it is
  not (an undocumented constant, a private module), so a role never breaks the strict build;
* a Google ``Example:`` section -> ``Examples:`` (griffe parses only the plural as doctest examples);
* the ``#:`` comment lines right above a module constant (Sphinx's convention, which metaopt uses) -> that
  constant's docstring, so every name in a module's ``__all__`` is rendered with its description.

Only the documentation build uses it (``mkdocs.yml``: ``extensions: [docs/_griffe_rst.py]``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>math|note)::[ \t]*(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _directives(text: str) -> str:
    """Rewrite ``.. math::`` and ``.. note::`` blocks (their body is the following, more indented lines)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        base = len(m["indent"])
        body: list[str] = [m["rest"]] if m["rest"] else []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        inner = min((_indent(b) for b in body[1 if m["rest"] else 0:] if b.strip()), default=base + 4)
        body = [body[0]] + [b[inner:] for b in body[1:]] if m["rest"] else [b[inner:] for b in body]
        pad = m["indent"]
        if m["name"] == "math":
            out += [f"{pad}\\[", *(f"{pad}{b}" if b else "" for b in body), f"{pad}\\]"]
        else:
            out += [f"{pad}!!! note", "", *(f"{pad}    {b}" if b else "" for b in body)]
        out.append("")
        i = j
    return "\n".join(out)


@cache
def _source_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` lines directly above a module-level attribute's assignment, joined (``None`` if there are none)."""
    if not obj.is_attribute or obj.lineno is None or not isinstance(obj.filepath, Path):
        return None
    lines = _source_lines(str(obj.filepath))
    found: list[str] = []
    i = obj.lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        found.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


class RstToMarkdown(griffe.Extension):
    """Rewrite the reST markup of every docstring in the package before mkdocstrings renders it."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Give commented constants their docstring, then rewrite every docstring of ``pkg``."""
        for obj in self._walk(pkg):
            if obj.docstring is None and (comment := _comment_docstring(obj)) is not None:
                obj.docstring = griffe.Docstring(comment, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = self._convert(obj.docstring.value, obj, loader)

    def _walk(self, obj: griffe.Object) -> list[griffe.Object]:
        found = [obj]
        for member in obj.members.values():
            if not member.is_alias:
                found += self._walk(member)  # type: ignore[arg-type]
        return found

    @staticmethod
    def _public(path: str) -> bool:
        return path.startswith("metaopt") and not any(p.startswith("_") for p in path.split("."))

    def _resolve(self, name: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
        module = obj if obj.is_module else obj.module
        scopes = [obj.path] if obj.is_class else []
        scopes += [obj.parent.path] if obj.parent is not None and obj.parent.is_class else []
        scopes.append(module.path)
        # In a private module (metaopt/popart/_art.py) also look where the package re-exports it (metaopt.popart).
        public = module.path
        while not self._public(public) and "." in public:
            public = public.rsplit(".", 1)[0]
        scopes += [public + scope[len(module.path):] for scope in scopes if public != module.path]
        candidates = [name] + [f"{scope}.{name}" for scope in scopes]
        for path in candidates:
            if not self._public(path):
                continue
            try:
                target = loader.modules_collection.get_member(path)
            except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            if target is not None:
                return path  # the public path it is documented under (a re-export keeps its own anchor)
        return None

    def _convert(self, text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        text = _EXAMPLE.sub(r"\1Examples:", text)
        text = _directives(text)
        text = _MATH_ROLE.sub(lambda m: f"\\({m[1]}\\)", text)

        def role(m: re.Match[str]) -> str:
            name = m[2].strip().removesuffix("()")
            shown = name.rsplit(".", 1)[-1] if m[1] else name
            path = self._resolve(name, obj, loader)
            if path is None:
                return f"`{shown}`"
            return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

        return _ROLE.sub(role, text)
