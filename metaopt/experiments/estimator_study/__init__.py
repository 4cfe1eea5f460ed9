r"""``metaopt estimator-study``: bias and variance of sampled MAML meta-gradients (surrogate, LVC, DiCE).

For a fixed initial policy (the job's ActorCritic, seed ``--seed``) and ``--num-tasks`` fixed TabularMDP
tasks, each estimator's inner step :math:`\theta' = \theta_0 - \alpha \nabla \hat L` is taken on ``N``
sampled trajectories per task through :func:`metaopt.engines.adapt`, the *exact* outer return
:math:`J(\theta')` is differentiated (:mod:`metaopt.exact`), and the meta-gradient is compared with the exact
:math:`\nabla_{\theta_0} \sum_n J_n(\theta_0 + \alpha\kappa\nabla J_n(\theta_0))` over ``--repeats`` repeats
for each ``N`` in ``--sizes`` (the problem and the sampling: :mod:`metaopt.verify.estimators`).

**Statistics** over :math:`R` repeats (:func:`summarize`): the relative error :math:`\|\bar g - g^\star\| /
\|g^\star\|` of the mean and the cosine similarity, with bootstrap percentile intervals; a *debiased* squared
bias :math:`\widehat{b^2} = \|\bar g - g^\star\|^2 - \operatorname{tr}\hat\Sigma / R` (unbiased for
:math:`\|\mathbb E \hat g - g^\star\|^2`, so its interval can cover 0), reported as
:math:`\operatorname{sign}(\widehat{b^2}) \sqrt{|\widehat{b^2}|} / \|g^\star\|`; and the variance
:math:`\operatorname{tr}\hat\Sigma / \|g^\star\|^2` of one estimate.

**Outputs** in ``--out``, each written atomically (:mod:`metaopt.artifacts`): ``study.json`` (the settings, and
per baseline the exact references and one row per estimator and ``N``), ``study.md`` (the table),
``estimator_bias.png`` (relative bias with its interval vs ``N`` and the relative variance vs ``N``, one line
per estimator, one row of panels per baseline) and, with ``--save-samples``, ``samples.pt`` (the raw
meta-gradients). ``--quick`` is a tiny budget for CI (well under 30 s).

Exit codes: 0 done, 2 bad input (one ``error:`` line naming the flag, its value and what was expected;
nothing written).

**Code.** ``_study`` (:func:`summarize`, :func:`run_estimator_study`), ``_report`` (the table, the plot and the
files) and ``_cli`` (:class:`Settings`, whose fields are the command-line flags); this package re-exports their
public names. torch is imported only when the study runs, so ``--help`` stays fast.
"""

from metaopt.experiments.estimator_study._cli import (
    BASELINE_NAMES,
    ENGINE_NAMES,
    ESTIMATOR_NAMES,
    FLAGS,
    POLICY_NAMES,
    QUICK,
    Settings,
    add_arguments,
    run,
    run_study,
)
from metaopt.experiments.estimator_study._report import OUTPUTS, format_markdown, write_outputs
from metaopt.experiments.estimator_study._study import run_estimator_study, summarize

__all__ = [
    "ESTIMATOR_NAMES",
    "BASELINE_NAMES",
    "POLICY_NAMES",
    "ENGINE_NAMES",
    "QUICK",
    "OUTPUTS",
    "Settings",
    "FLAGS",
    "summarize",
    "run_estimator_study",
    "format_markdown",
    "write_outputs",
    "add_arguments",
    "run_study",
    "run",
]
