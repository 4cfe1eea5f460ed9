from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metaopt
import metaopt._version

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_resolve_to_the_submodules():
    from metaopt import engines, popart

    assert metaopt.adapt is engines.adapt and metaopt.popart is popart and metaopt.PopArtState is popart.PopArtState
    for name in metaopt.__all__:
        assert getattr(metaopt, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        metaopt.nope  # noqa: B018


def test_lazy_names_are_listed_by_dir():
    names = dir(metaopt)
    assert "adapt" in names and "PopArtState" in names and "__version__" in names
    assert set(metaopt.__all__) <= set(names)
    assert names == sorted(names)


def test_type_checkers_see_exactly_the_lazy_names():
    """The ``if TYPE_CHECKING:`` imports, the lazy table and ``__all__`` name the same objects."""
    tree = ast.parse((ROOT / "metaopt" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen: dict[str, tuple[str, str | None]] = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            if node.module == "metaopt":  # `from metaopt import popart`: a submodule
                seen[alias.asname or alias.name] = (f"metaopt.{alias.name}", None)
            else:
                seen[alias.asname or alias.name] = (node.module, alias.name)
    assert seen == metaopt._LAZY
    assert set(metaopt.__all__) == set(metaopt._LAZY) | {"__version__"}


def test_version_is_written_once_and_matches_the_metadata():
    assert metaopt.__version__ == metaopt._version.__version__ == importlib.metadata.version("metaopt-torch")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r'^version = "', pyproject, flags=re.M)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_import_and_cli_help_and_version_do_not_import_torch():
    code = (
        "import sys, contextlib, io, metaopt, metaopt.cli\n"
        "assert 'torch' not in sys.modules, 'import metaopt imported torch'\n"
        "for argv in (['--help'], ['--version'], ['estimator-study', '--help'], ['maml-rl', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            metaopt.cli.main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    if argv[0] != 'maml-rl':\n"
        "        assert 'torch' not in sys.modules, f'metaopt {argv} imported torch'\n"
        "    print(out.getvalue())\n"
    )
    out = _run(code).stdout
    assert f"metaopt {metaopt.__version__}" in out and "maml-rl" in out


def test_version_flag_prints_the_version():
    proc = subprocess.run([sys.executable, "-m", "metaopt.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"metaopt {metaopt.__version__}"


def test_package_ships_type_information():
    assert (ROOT / "metaopt" / "py.typed").is_file()
