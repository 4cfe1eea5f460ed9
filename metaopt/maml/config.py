"""Configuration of a MAML-A2C run: one dataclass, validated once, from which the CLI is generated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from metaopt import estimators
from metaopt._validation import check_bool, check_choice, check_int, check_real
from metaopt.engines import ENGINES
from metaopt.inner_optim import KINDS
from metaopt.meta_params import LEARNABLE, check_representable
from metaopt.rl import ACTIVATIONS, VALUE_UNITS

__all__ = ["MAMLConfig", "OBJECTIVES", "ESTIMATORS", "DTYPES", "MAX_SEED", "ENVS", "DEFAULT_HORIZONS"]

#: Which outer terms a learned inner hyperparameter follows.
OBJECTIVES = ("policy", "value", "total")
#: The built-in environment families (:func:`metaopt.maml.make_env`).
ENVS = ("tabular", "pointnav2d")
#: Default episode length per environment.
DEFAULT_HORIZONS = {"tabular": 10, "pointnav2d": 100}
#: Meta-policy-gradient estimators of the inner step (see :mod:`metaopt.estimators`).
ESTIMATORS = tuple(estimators.ESTIMATORS)
#: Floating-point dtypes of the job by name (``MAMLConfig.dtype``).
DTYPES = ("float32", "float64")
#: The largest seed: the run derives seeds ``seed * 7919 + iteration`` and ``seed * 1009 + repeat``, which must
#: stay below 2**63 (torch's generators take 64-bit seeds).
MAX_SEED = 2**48 - 1


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass
class MAMLConfig:
    """Configuration of a MAML-A2C run.

    The defaults are TorchOpt's reference setup (no PopArt, nothing learned but theta_0); the PopArt and
    meta-objective options default to the recommended configuration, so ``popart=True, learn=("lr", "beta")``
    alone runs it (see the README's study).

    Attributes:
        env: Task family: tabular (TabularMDP, categorical policy) or pointnav2d (2D navigation, Gaussian policy;
            Finn et al. 2017).
        engine: Meta-gradient engine: func (tasks vectorized with vmap), higher or torchopt.
        tasks: Tasks per meta-iteration.
        trajectories: Episodes per task in each inner step's batch and in the outer batch.
        iterations: Meta-iterations.
        inner_steps: Inner gradient steps K; each step samples fresh episodes with the current adapted policy.
            none (default): 1, or 2 when beta is learned with debiased PopArt statistics (one debiased ART step
            sets beta_1 = 1, which leaves beta no role).
        inner_lr: Initial inner learning rate.
        inner_optimizer: Inner optimizer: sgd or adam.
        inner_momentum: SGD momentum of the inner optimizer.
        beta: Initial PopArt step size, in (0, 1).
        learn: Meta-parameters learned besides theta_0: a subset of (lr, beta).
        lr_objective: Outer terms whose meta-gradient drives a learned lr: policy (the post-adaptation policy
            objective), value or total.
        beta_objective: Outer terms whose meta-gradient drives a learned beta (as lr_objective).
        popart: PopArt value normalization in the inner and outer losses (per-task statistics, fresh each
            iteration).
        popart_advantages: With PopArt, divide the policy's advantages by sigma (a scale-free inner policy step;
            the scale is a constant there, so beta gets no meta-gradient through it).
        debias: With PopArt, the debiased step size beta_t = beta / (1 - (1 - beta)^t): the first ART step
            sets the statistics to the batch's mean and standard deviation.
        first_pop: With PopArt, POP at the first inner step too (off: theta_0's value head is read as a
            normalized prediction under the first statistics).
        outer_value: With PopArt, the outer value error: sg_scale, (G - V) / stopgrad(sigma) (cannot be gamed
            by inflating sigma; V = sigma n + mu keeps its dependence on the statistics, which POP makes exactly
            output-preserving), or normalized, (G - mu) / sigma - n. The job's ART targets are detached, so the
            statistics depend on beta alone and the choice matters for a beta that follows the value or total
            objective.
        estimator: The policy term, whose second derivatives make the meta-gradient: surrogate (TorchOpt's
            -mean(sg(A) log pi); its meta-gradient is biased for any number of episodes), dice (unbiased at every
            order; Monte-Carlo returns with the value baseline, lam unused) or lvc (ProMP's low-variance curvature).
            dice and lvc weight step t by gamma^t (the exact gradient of the discounted return) while the
            surrogate keeps TorchOpt's unweighted mean, so at gamma < 1 their first derivatives differ by that
            weighting too.
        scaled: Scaled tasks: task rewards multiplied by c = 10^u, u ~ U(scale_lo, scale_hi).
        scale_lo: Lower exponent of the scale range.
        scale_hi: Upper exponent of the scale range.
        outer_lr: Outer Adam learning rate of theta_0.
        meta_lr: Outer Adam learning rate of the learned log_lr and logit_beta (log-space parameters).
        gamma: Discount.
        lam: Lambda of the lambda-returns.
        value_coef: Value-loss weight.
        hidden: Hidden width of the agent.
        activation: Hidden activation of the agent: relu (TorchOpt's), tanh, elu or leaky_relu.
        init_log_std: Initial log standard deviation of a Gaussian policy (pointnav2d).
        lr_per_parameter: A learned lr has one rate per parameter tensor (Meta-SGD style) instead of one shared.
        num_states: TabularMDP states (tabular only).
        num_actions: TabularMDP actions (tabular only).
        horizon: Episode length; none (default): 10 for tabular, 100 for pointnav2d.
        first_order: First-order meta-gradients.
        truncate: Backpropagate through the last k inner steps only (none: all).
        eval_every: Evaluate on the fixed test tasks every this many iterations; 0 evaluates only at the end.
        eval_tasks: Number of test tasks.
        seed: Seed of everything.
        dtype: float32 or float64.
        device: Torch device of the whole run (cpu, cuda, cuda:1, ...).
        state_table: Evaluate the network once per state and gather for every visit (observations are one-hot
            states, so the values are the same as one forward pass per visited state, with far fewer rows);
            off: one forward pass per visit (the reference path).
    """

    env: str = field(default="tabular", metadata=_choices(*ENVS))
    engine: str = field(default="func", metadata=_choices(*ENGINES))
    tasks: int = 40
    trajectories: int = 20
    iterations: int = 500
    inner_steps: int | None = None
    inner_lr: float = 0.1
    inner_optimizer: str = field(default="sgd", metadata=_choices(*KINDS))
    inner_momentum: float = 0.0
    beta: float = 0.1
    learn: tuple[str, ...] = field(default=(), metadata={"choices": LEARNABLE})
    lr_objective: str = field(default="policy", metadata=_choices(*OBJECTIVES))
    beta_objective: str = field(default="policy", metadata=_choices(*OBJECTIVES))
    popart: bool = False
    popart_advantages: bool = True
    debias: bool = True
    first_pop: bool = False
    outer_value: str = field(default="sg_scale", metadata=_choices(*VALUE_UNITS))
    estimator: str = field(default="surrogate", metadata=_choices(*ESTIMATORS))
    scaled: bool = False
    scale_lo: float = -2.0
    scale_hi: float = 3.0
    outer_lr: float = 1e-3
    meta_lr: float = 0.01
    gamma: float = 0.99
    lam: float = 0.95
    value_coef: float = 0.5
    hidden: int = 32
    activation: str = field(default="relu", metadata=_choices(*ACTIVATIONS))
    init_log_std: float = 0.0
    lr_per_parameter: bool = False
    num_states: int = 10
    num_actions: int = 5
    horizon: int | None = None
    first_order: bool = False
    truncate: int | None = None
    eval_every: int = 50
    eval_tasks: int = 40
    seed: int = 0
    dtype: str = field(default="float32", metadata=_choices(*DTYPES))
    device: str = "cpu"
    state_table: bool = True

    def validate(self, *, names: dict[str, str] | None = None) -> MAMLConfig:
        """Check every field, raising one clear error naming the field, its value and what was expected.

        Args:
            names: How to name fields in messages (e.g. ``{"inner_lr": "--inner-lr"}`` for the command
                line); unlisted fields keep their own name.

        Returns:
            ``self`` (``learn`` normalized to a tuple, ``inner_steps`` resolved).
        """
        names = names or {}

        def n(f: str) -> str:
            return names.get(f, f)

        if isinstance(self.learn, str):  # "beta,lr" as on the command line
            self.learn = tuple(x.strip() for x in self.learn.split(",") if x.strip())
        self.learn = tuple(self.learn)
        for f in fields(self):
            name, value = n(f.name), getattr(self, f.name)
            if f.name == "learn":
                unknown = [x for x in value if x not in LEARNABLE]
                if unknown:
                    raise ValueError(f"{name} must be a subset of {LEARNABLE}, got {value!r} (unknown: {unknown})")
            elif "choices" in f.metadata:
                check_choice(name, value, f.metadata["choices"])
            elif f.type in ("bool",):
                check_bool(name, value)
        self.inner_steps = self.num_inner_steps
        self.horizon = self.episode_length
        for key in ("tasks", "trajectories", "iterations", "inner_steps", "hidden", "num_states", "num_actions",
                    "horizon", "eval_tasks"):
            check_int(n(key), getattr(self, key), low=1)
        check_int(n("eval_every"), self.eval_every, low=0)
        check_int(n("seed"), self.seed, low=0, high=MAX_SEED)
        for key in ("inner_lr", "outer_lr", "meta_lr"):
            check_real(n(key), getattr(self, key), low=0.0, low_open=True)
        check_real(n("beta"), self.beta, low=0.0, high=1.0, low_open=True, high_open=True)
        check_representable(self.inner_lr, self.beta, self.torch_dtype, lr_name=n("inner_lr"), beta_name=n("beta"))
        check_real(n("inner_momentum"), self.inner_momentum, low=0.0, high=1.0, high_open=True)
        check_real(n("gamma"), self.gamma, low=0.0, high=1.0, low_open=True)
        check_real(n("lam"), self.lam, low=0.0, high=1.0)
        check_real(n("value_coef"), self.value_coef, low=0.0)
        check_real(n("init_log_std"), self.init_log_std)
        check_real(n("scale_lo"), self.scale_lo)
        check_real(n("scale_hi"), self.scale_hi)
        if self.scale_lo > self.scale_hi:
            raise ValueError(f"{n('scale_lo')} must be <= {n('scale_hi')}, got {n('scale_lo')}={self.scale_lo} and "
                             f"{n('scale_hi')}={self.scale_hi}")
        check_int(f"{n('truncate')} (at most {n('inner_steps')}={self.inner_steps})", self.truncate, low=0,
                  high=self.inner_steps, allow_none=True)
        if self.inner_optimizer == "adam" and self.inner_momentum:
            raise ValueError(f"{n('inner_momentum')} is SGD's; with {n('inner_optimizer')}"
                             f"='adam' expected 0, got {self.inner_momentum}")
        if "beta" in self.learn and not self.popart:
            raise ValueError(
                f"{n('learn')}={self.learn!r} includes 'beta' but {n('popart')} is off; beta is "
                f"PopArt's step size, so expected {n('popart')} on (or drop 'beta' from {n('learn')})"
            )
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{n('device')} must be a torch device such as 'cpu' or 'cuda', got "
                             f"{self.device!r}") from err
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{n('device')} must be 'cpu' or a CUDA device ('cuda', 'cuda:1'), got {self.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{n('device')}={self.device!r} needs CUDA, which this machine does not have; "
                             "expected 'cpu'")
        return self

    @property
    def num_inner_steps(self) -> int:
        """``inner_steps`` resolved: as given, or 2 when beta is learned with debiased statistics, else 1."""
        if self.inner_steps is not None:
            return self.inner_steps
        return 2 if (self.popart and self.debias and "beta" in self.learn) else 1

    @property
    def episode_length(self) -> int:
        """``horizon`` resolved: as given, or the environment's default (:data:`DEFAULT_HORIZONS`)."""
        if self.horizon is not None:
            return self.horizon
        return DEFAULT_HORIZONS.get(self.env, DEFAULT_HORIZONS["tabular"])

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the run."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def torch_device(self) -> torch.device:
        """The torch device of the run."""
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["learn"] = list(self.learn)
        return d
