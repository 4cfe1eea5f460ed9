"""metaopt: differentiable PopArt and verified meta-gradients for meta-RL on PyTorch.

The flat public surface; submodules hold the details:

* :mod:`metaopt.popart` -- PopArt as pure, differentiable functions;
* :mod:`metaopt.engines` -- one inner loop on ``torch.func``, ``higher`` or TorchOpt;
* :mod:`metaopt.online` -- lr and PopArt beta meta-learned online through a learner's own updates;
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
    from metaopt import estimators, exact, popart
    from metaopt.engines import (
        ENGINES,
        AdaptResult,
        InnerLoop,
        NonFiniteTaskError,
        PopArtSpec,
        adapt,
        adapt_tasks,
        adapt_vmap,
        map_tasks,
        per_step,
    )
    from metaopt.inner_optim import InnerOptimizer, adam, sgd
    from metaopt.integrations import pop_fmodel_, pop_module_
    from metaopt.meta_params import MetaParameters
    from metaopt.online import OnlineMetaLearner
    from metaopt.popart import PopArtHead, PopArtState
    from metaopt.verify import check_gradients

# Attributes load on first use (PEP 562), so `metaopt --help` does not pay for importing torch.
# Keep this table, the TYPE_CHECKING imports above and __all__ in step (tests/test_package.py checks it).
_LAZY: dict[str, tuple[str, str | None]] = {
    "popart": ("metaopt.popart", None),
    "exact": ("metaopt.exact", None),
    "estimators": ("metaopt.estimators", None),
    "ENGINES": ("metaopt.engines", "ENGINES"),
    "AdaptResult": ("metaopt.engines", "AdaptResult"),
    "InnerLoop": ("metaopt.engines", "InnerLoop"),
    "NonFiniteTaskError": ("metaopt.engines", "NonFiniteTaskError"),
    "PopArtSpec": ("metaopt.engines", "PopArtSpec"),
    "adapt": ("metaopt.engines", "adapt"),
    "adapt_tasks": ("metaopt.engines", "adapt_tasks"),
    "adapt_vmap": ("metaopt.engines", "adapt_vmap"),
    "map_tasks": ("metaopt.engines", "map_tasks"),
    "per_step": ("metaopt.engines", "per_step"),
    "InnerOptimizer": ("metaopt.inner_optim", "InnerOptimizer"),
    "sgd": ("metaopt.inner_optim", "sgd"),
    "adam": ("metaopt.inner_optim", "adam"),
    "pop_module_": ("metaopt.integrations", "pop_module_"),
    "pop_fmodel_": ("metaopt.integrations", "pop_fmodel_"),
    "MetaParameters": ("metaopt.meta_params", "MetaParameters"),
    "OnlineMetaLearner": ("metaopt.online", "OnlineMetaLearner"),
    "PopArtHead": ("metaopt.popart", "PopArtHead"),
    "PopArtState": ("metaopt.popart", "PopArtState"),
    "check_gradients": ("metaopt.verify", "check_gradients"),
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
    "NonFiniteTaskError",
    "OnlineMetaLearner",
    "PopArtHead",
    "PopArtSpec",
    "PopArtState",
    "__version__",
    "adam",
    "adapt",
    "adapt_tasks",
    "adapt_vmap",
    "check_gradients",
    "estimators",
    "exact",
    "map_tasks",
    "per_step",
    "pop_fmodel_",
    "pop_module_",
    "popart",
    "sgd",
]
