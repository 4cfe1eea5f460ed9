r"""Differentiable PopArt: adaptive target normalization that preserves outputs.

PopArt (van Hasselt et al., 2016) splits a value network into a body ``h = h_theta(x)`` and a last linear
layer ``(W, b)``. The layer predicts *normalized* values ``n(x) = W h + b``; the unnormalized prediction is
``f(x) = sigma * n(x) + mu``. Two steps keep the normalization adaptive:

* **ART** (:func:`art`) tracks the targets' mean ``mu`` and scale ``sigma`` with step size ``beta``;
* **POP** (:func:`pop`) rescales ``(W, b)`` so that ``f(x)`` is unchanged by the new statistics.

Everything here is a pure function of tensors and a :class:`PopArtState` NamedTuple. Nothing edits
``.data`` or works in place, so gradients flow through the statistics into ``beta`` and the targets and
meta-gradient engines (``torch.func``, ``higher``, TorchOpt) can differentiate through PopArt. Whether
gradients flow through the new statistics is an explicit argument of :func:`art` (``stop_gradient``).

**Bounds on sigma.** :func:`art` clips ``sigma`` into ``[sigma_min, sigma_max]``, by default
``[DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX] = [1e-6, 1e10]``: two decades of margin around the target scales
the library is tested on (``1e-4`` to ``1e8``, float32 and float64), so the clip is inactive there. Both
squares stay normal floats in float32 (``1e-12`` and ``1e20``; float32 overflows at ``3.4e38``, i.e.
``sigma > 1.8e19``), and :func:`art` rejects bounds whose squares do not. Hessel et al. (2018) used
``[1e-4, 1e6]``: pass those explicitly to reproduce them. While the clip is active, the normalized targets
are no longer O(1) (a 1e8-scale target over ``sigma = 1e6`` is ~100) and ``sigma`` gets no gradient; on
concrete values :func:`art` then emits a :class:`SigmaClipWarning`, and :func:`sigma_at_bound` tells which
outputs sit on a bound (sum it over steps to count clipped steps; :class:`PopArtHead` keeps that count).

**Checked values.** Where values are concrete (not wrapped by a ``torch.func`` transform such as
``vmap`` or ``grad``), every function checks that ``state.sigma`` is positive and finite and ``state.mu``
finite, so a hand-built state with ``sigma = 0`` raises a ``ValueError`` instead of returning inf/NaN. Inside
``torch.func`` transforms values cannot be read and these checks are skipped; validate the state once
outside the transform (e.g. call :func:`normalize` on it) if it was built by hand.

Example:
    >>> import torch
    >>> from metaopt import popart
    >>> w = torch.randn(1, 4, dtype=torch.float64)
    >>> b = torch.zeros(1, dtype=torch.float64)
    >>> state = popart.init(1, like=w)                    # dtype and device of the head
    >>> new = popart.art(state, torch.tensor([100.0, 120.0], dtype=torch.float64), beta=0.5)
    >>> w, b = popart.pop(w, b, state, new)
"""

from metaopt.popart._art import SigmaClipWarning, art, sigma_at_bound
from metaopt.popart._head import PopArtHead
from metaopt.popart._pop import normalize, pop, unnormalize
from metaopt.popart._sgd import normalized_sgd_step
from metaopt.popart._state import BATCH_RULES, DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN, PopArtState, init, init_tasks

__all__ = [
    "DEFAULT_SIGMA_MIN",
    "DEFAULT_SIGMA_MAX",
    "BATCH_RULES",
    "PopArtState",
    "SigmaClipWarning",
    "init",
    "init_tasks",
    "art",
    "sigma_at_bound",
    "pop",
    "normalize",
    "unnormalize",
    "normalized_sgd_step",
    "PopArtHead",
]
