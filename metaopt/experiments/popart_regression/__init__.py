r"""PopArt paper Fig. 1a: binary regression with SGD, ART and PopArt, vectorized over seeds.

The experiment (van Hasselt et al., 2016, §3): targets are uniform integers in ``0..1023``; the input is
the target's 16-bit binary code (most significant bit first, zero-padded, floats 0/1). Every
``OUTLIER_PERIOD = 1000`` samples one target is the outlier ``65535`` (all 16 bits set). Samples are fed
one at a time; before the SGD step on sample ``t`` its squared error on the current model is recorded (the
"test error"; whether ART has already seen ``Y_t`` then is a protocol choice, see below).

**Outlier positions.** Sample indices ``1000, 2000, 3000, 4000`` (0-based ``t > 0`` with
``t % 1000 == 0``): each run starts with 1000 ordinary samples, and with 5000 samples the last window is
outlier free. (Placing them at ``999, 1999, ...`` would put one on the very last sample, and the final RMSE
would be the outlier spike ≈ 6.7k rather than the ≈ 17 (PopArt) / 255 (SGD) the seed reproduction reports.)

**Network.** ``16 → 4 × [Linear(·, 10), tanh] → Linear(10, 1)``, every layer initialized like PyTorch's
``nn.Linear`` (``kaiming_uniform_(a=√5)`` weights, ``U(±1/√fan_in)`` biases), drawn per seed from
``torch.Generator().manual_seed(seed + i)``, which then draws that seed's targets. All methods share the
initial weights and the data of a seed. (The ``reproduction`` protocol then sets the output layer to
``weight = 1, bias = 0``.)

**Methods** (one SGD step on ``½ δ²`` per sample; for ART/PopArt with ``δ = n(x) − (Y − μ')/σ'``, the
statistics updated by :func:`metaopt.popart.art` on ``Y_t`` *before* the step):

========  ===================  ===========  ================================================
method    lr ``α``             ``β``        per sample
========  ===================  ===========  ================================================
sgd       ``10^-3.5``          –            SGD on ``½ (n(x) − Y)²``
art       ``10^-2.5`` (paper)  ``1e-4``     ART, then SGD on the normalized loss (no POP)
popart    ``10^-2.5``          ``10^-0.5``  ART, POP (:func:`metaopt.popart.pop`), then SGD
========  ===================  ===========  ================================================

**Protocols** (:data:`PROTOCOLS`, ``--protocol``). ``paper`` (the default) reads the paper literally: the
test error of sample ``t`` is ``f(x_t) = σ n(x_t) + μ`` with the statistics *before* ART sees ``Y_t``,
every layer has PyTorch's ``nn.Linear`` init, ART's lr is the paper's ``10^-2.5``. ``reproduction`` makes
the seed reproduction's choices (Pop-Art-Translation, ``Agent.py``): ART (and POP) run on ``Y_t`` *before*
the error is recorded (``|σ' n(x_t) + μ' − Y_t|``), the output layer starts at ``weight = 1, bias = 0``,
and ART's lr is ``10^-3.5``. Choices that the reproduction makes and that change nothing here: ``½ MSE``
(used by both), separate SGD optimizers for body and head (the same update as one SGD step, checked in
``tests/test_popart.py``), the window-10 moving average and the median over 50 seeds (the final value is
the same with or without partial windows). Not replicated: its data layout (5004 samples with outliers at
1000, 2001, 3002, 4003) and its textbook ``ν − μ²`` statistics in float32. ``--record``, ``--head-init``
and ``--art-lr`` override one choice at a time.

**What drives ART's gap** (50 seeds, float32, final median RMSE; ``p10–p90``): recording after ART changes
nothing measurable (ART's ``β = 1e-4`` moves ``σ, μ`` by tiny amounts per sample, and at POP the output is
preserved). The gap comes from the head init and ART's lr *together*: paper 243 (120–309); head ``ones``
only 239; lr ``10^-3.5`` only 298; both (= reproduction) 133 (94–231), and 140 (101–181) on seeds 50–99.
The body's gradient flows through ``W``: with ``W = 1`` (``‖W‖² = 10``) instead of ``nn.Linear``'s
``U(±0.32)`` (``E‖W‖² ≈ 0.33``) a body step moves the output far more, so a smaller lr suits the ``ones``
head. ART's final RMSE is sensitive to lr with either head: default head 478 / 298 / 88 / 243 and ``ones``
head 235 / 133 / 63 / 239 at lr ``10^-4 / 10^-3.5 / 10^-3 / 10^-2.5``. With the paper's ``10^-2.5`` the median seed
does not recover from the first outlier (median ``σ`` jumps from ≈ 175 to ≈ 680 and the normalized error on
the outlier is ≈ 91, one huge SGD step). SGD and PopArt hardly depend on the protocol (SGD 248.1 / 248.6,
PopArt 17.2 / 16.8).

**Vectorization.** All seeds run at once: every parameter carries a leading ``[seeds]`` dimension, and the
statistics are one :class:`~metaopt.popart.PopArtState` with ``num_outputs = seeds`` (the head weight
``[seeds, 10]`` is a ``[rows, in_features]`` layer whose row ``i`` uses statistic ``i``). Gradients are
written out by hand (backpropagation through ``tanh`` with batched matmuls) under ``torch.no_grad()``;
the test suite checks them against autograd. Only the time loop runs in Python.

**Curve.** Per seed, the per-sample RMSE ``√(e_t²) = |e_t|`` smoothed by a trailing moving average of
width ``window = 10`` (partial windows at the start):

.. math::
    r_t = \frac{1}{\min(t+1, w)} \sum_{k=\max(0, t-w+1)}^{t} |e_k|,

then the median and the 10th/90th percentiles over seeds. An outlier's error (≈ 65k) therefore shows as a
spike of ≈ 6.7k, as in the seed reproduction; the final RMSE is ``r`` at the last sample.

**Dtype and speed.** ``float32`` by default: at these sizes per-operation overhead dominates, so it runs as
fast as ``float64`` (about 1.5–2 s per method for 50 seeds × 5000 samples on a 2-core CPU). Trajectories
of the two dtypes drift apart after the outliers, but the statistics agree (seed 0, final median RMSE:
PopArt 17.2 / 18.4, SGD 249 / 261 in float32 / float64).

**Learned online.** ``learn=("beta", "lr")`` (``--learn beta,lr``) runs PopArt with its ``beta`` and ``lr`` learned
during each run by :class:`metaopt.online.OnlineMetaLearner` (``beta``/``lr`` are then the initial values; every seed
learns its own; see ``_online``), and :meth:`Results.rmse_inliers` scores a run by each seed's RMSE over all samples
except the outliers.

**Code.** ``_protocols`` (constants, methods, protocols, argument checks), ``_simulation`` (data, network,
:func:`simulate`), ``_online`` (the learned-online run), ``_experiment`` (:func:`run_experiment`,
:class:`Results`), ``_report`` (table and files) and ``_cli`` (:class:`Settings`, whose fields are the command-line
flags); this package re-exports their public names.
"""

from metaopt.experiments.popart_regression._cli import Settings, add_arguments, run
from metaopt.experiments.popart_regression._experiment import Results, run_experiment
from metaopt.experiments.popart_regression._protocols import (
    BITS,
    DEFAULT_METHODS,
    DTYPES,
    HEAD_INITS,
    HIDDEN,
    MAX_TARGET,
    OUTLIER_PERIOD,
    OUTLIER_TARGET,
    PROTOCOLS,
    RECORD_CHOICES,
    MethodSpec,
    Protocol,
    resolve_protocol,
)
from metaopt.experiments.popart_regression._report import format_table, write_outputs
from metaopt.experiments.popart_regression._simulation import (
    binary_code,
    init_params,
    make_targets,
    moving_average,
    outlier_positions,
    simulate,
)

__all__ = [
    "BITS",
    "MAX_TARGET",
    "OUTLIER_TARGET",
    "OUTLIER_PERIOD",
    "HIDDEN",
    "MethodSpec",
    "DEFAULT_METHODS",
    "DTYPES",
    "RECORD_CHOICES",
    "HEAD_INITS",
    "Protocol",
    "PROTOCOLS",
    "Results",
    "binary_code",
    "outlier_positions",
    "make_targets",
    "init_params",
    "simulate",
    "resolve_protocol",
    "moving_average",
    "run_experiment",
    "format_table",
    "write_outputs",
    "Settings",
    "add_arguments",
    "run",
]
