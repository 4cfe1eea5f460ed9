"""metaopt: differentiable PopArt and verified meta-gradients for meta-RL on PyTorch.

The flat public surface; submodules hold the details:

* :mod:`metaopt.popart` -- PopArt as pure, differentiable functions;
* :mod:`metaopt.engines` -- one inner loop on ``torch.func``, ``higher`` or TorchOpt;
* :mod:`metaopt.verify` -- meta-gradient checks against finite differences and analytic values;
* :mod:`metaopt.envs`, :mod:`metaopt.rl`, :mod:`metaopt.maml` -- the MAML-A2C job on TabularMDP.

Example:
    >>> import metaopt
    >>> "adapt" in dir(metaopt)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metaopt._version import __version__

if TYPE_CHECKING:  # what type checkers and documentation tools see; at run time the names load lazily
    from metaopt import popart
    from metaopt.engines import ENGINES, AdaptResult, InnerLoop, PopArtSpec, adapt, adapt_vmap
    from metaopt.inner_optim import InnerOptimizer
    from metaopt.meta_params import MetaParameters
    from metaopt.popart import PopArtHead, PopArtState

# Attributes load on first use (PEP 562), so `metaopt --help` does not pay for importing torch.
# Keep this table, the TYPE_CHECKING imports above and __all__ in step (tests/test_package.py checks it).
_LAZY: dict[str, tuple[str, str | None]] = {
    "popart": ("metaopt.popart", None),
    "ENGINES": ("metaopt.engines", "ENGINES"),
    "AdaptResult": ("metaopt.engines", "AdaptResult"),
    "InnerLoop": ("metaopt.engines", "InnerLoop"),
    "PopArtSpec": ("metaopt.engines", "PopArtSpec"),
    "adapt": ("metaopt.engines", "adapt"),
    "adapt_vmap": ("metaopt.engines", "adapt_vmap"),
    "InnerOptimizer": ("metaopt.inner_optim", "InnerOptimizer"),
    "MetaParameters": ("metaopt.meta_params", "MetaParameters"),
    "PopArtHead": ("metaopt.popart", "PopArtHead"),
    "PopArtState": ("metaopt.popart", "PopArtState"),
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'metaopt' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    """The module's attributes plus the lazily loaded public names (for ``dir()`` and completion)."""
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ENGINES",
    "AdaptResult",
    "InnerLoop",
    "InnerOptimizer",
    "MetaParameters",
    "PopArtHead",
    "PopArtSpec",
    "PopArtState",
    "__version__",
    "adapt",
    "adapt_vmap",
    "popart",
]
