"""metaopt: differentiable PopArt and verified meta-gradients for meta-RL on PyTorch.

The flat public surface; submodules hold the details:

* :mod:`metaopt.popart` -- PopArt as pure, differentiable functions;
* :mod:`metaopt.engines` -- one inner loop on ``torch.func``, ``higher`` or TorchOpt;
* :mod:`metaopt.verify` -- meta-gradient checks against finite differences and analytic values;
* :mod:`metaopt.envs`, :mod:`metaopt.rl`, :mod:`metaopt.maml` -- the MAML-A2C job on TabularMDP.
"""

from __future__ import annotations

import importlib
from typing import Any

# Attributes load on first use (PEP 562), so `metaopt --help` does not pay for importing torch.
_LAZY = {
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
    if name not in _LAZY:
        raise AttributeError(f"module 'metaopt' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


__version__ = "0.1.0"

__all__ = [
    "ENGINES",
    "AdaptResult",
    "InnerLoop",
    "InnerOptimizer",
    "MetaParameters",
    "PopArtHead",
    "PopArtSpec",
    "PopArtState",
    "adapt",
    "adapt_vmap",
    "popart",
    "__version__",
]
