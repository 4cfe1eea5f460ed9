from __future__ import annotations

import subprocess
import sys

import pytest

import metaopt


def test_public_names_resolve_to_the_submodules():
    from metaopt import engines, popart

    assert metaopt.adapt is engines.adapt and metaopt.popart is popart and metaopt.PopArtState is popart.PopArtState
    for name in metaopt.__all__:
        assert getattr(metaopt, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        metaopt.nope  # noqa: B018


def test_cli_help_does_not_import_torch():
    code = "import sys, metaopt.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
