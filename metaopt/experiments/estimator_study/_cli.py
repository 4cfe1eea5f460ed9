"""``metaopt estimator-study``: the flags are generated from :class:`Settings` (defaults stated once, there)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metaopt.artifacts import check_no_results, check_outputs
from metaopt.dataclass_args import add_dataclass_arguments, dataclass_flags, dataclass_from_args
from metaopt.experiments.estimator_study._report import format_markdown, write_outputs

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ESTIMATOR_NAMES", "BASELINE_NAMES", "POLICY_NAMES", "ENGINE_NAMES", "QUICK", "Settings", "FLAGS",
           "add_arguments", "run_study", "run"]

#: The meta-policy-gradient estimators the study compares (``--estimators``).
ESTIMATOR_NAMES = ("surrogate", "lvc", "dice")
#: Baselines: ``metaopt.verify.estimators.BASELINES`` (not imported here: it imports torch).
BASELINE_NAMES = ("value", "exact", "none")
#: Policies: the ActorCritic network or a tabular softmax policy (``--policy``).
POLICY_NAMES = ("network", "tabular")
#: ``metaopt.engines.ENGINES`` (not imported here: it imports torch).
ENGINE_NAMES = ("func", "higher", "torchopt")
#: The ``--quick`` budget: these fields replace the given ones (the ``--quick`` help states them; a test checks).
QUICK: dict[str, Any] = {"sizes": (10, 100), "repeats": 4, "bootstrap": 100, "num_tasks": 2, "baselines": ("value",)}


@dataclass(frozen=True)
class Settings:
    """Options of ``metaopt estimator-study``: the problem, the study's budget and the outputs."""

    estimators: tuple[str, ...] = field(default=ESTIMATOR_NAMES, metadata={"choices": ESTIMATOR_NAMES})
    """comma-separated estimators"""
    sizes: tuple[int, ...] = (10, 100, 1000, 10000)
    """comma-separated numbers N >= 1 of inner trajectories per task"""
    repeats: int = 100
    """repeats R >= 2 per N"""
    baselines: tuple[str, ...] = field(default=("value", "exact"), metadata={"choices": BASELINE_NAMES})
    """comma-separated baselines b_t(s): value (the network's value head, as the job), exact (V_t(s) of the
    initial policy), none"""
    policy: str = field(default="network", metadata={"choices": POLICY_NAMES})
    """initial policy: the job's ActorCritic or a logit table"""
    num_tasks: int = 4
    """number of fixed tasks (>= 1)"""
    horizon: int = 10
    """episode length T (>= 1)"""
    lr: float = 1.0
    """inner SGD rate alpha > 0 (the job uses 0.1; the step follows alpha*kappa*grad J, kappa = 1/T)"""
    gamma: float = 1.0
    """discount in [0, 1] of the estimators and of J (1 = the job's reported return)"""
    engine: str = field(default="func", metadata={"choices": ENGINE_NAMES})
    """meta-gradient engine"""
    bootstrap: int = 1000
    """bootstrap resamples (>= 10)"""
    confidence: float = 0.95
    """interval level in (0, 0.999]"""
    seed: int = 0
    """seed (>= 0) of the policy, the tasks and the rollouts"""
    quick: bool = False
    """tiny CI budget (well under 30 s): --sizes 10,100 --repeats 4 --bootstrap 100 --num-tasks 2 --baselines value,
    replacing those flags"""
    out: str = "runs/estimator_study"
    """output folder (study.json, study.md, estimator_bias.png, samples.pt)"""
    plot: bool = True
    """draw estimator_bias.png (--no-plot: skip it, no matplotlib needed)"""
    save_samples: bool = False
    """also write samples.pt: the raw [R, P] meta-gradients and the exact references"""
    overwrite: bool = False
    """replace the results of an earlier run in --out (without it, an --out holding them is refused)"""

    def validate(self) -> Settings:
        """Check every field; errors name the flag, the value and what was expected. Returns ``self``."""
        from metaopt._validation import check_choice, check_int, check_real  # imports torch: not at --help

        for name, low in (("repeats", 2), ("num_tasks", 1), ("horizon", 1), ("bootstrap", 10), ("seed", 0)):
            check_int(FLAGS[name], getattr(self, name), low=low)
        check_real(FLAGS["lr"], self.lr, low=0.0, low_open=True)
        check_real(FLAGS["gamma"], self.gamma, low=0.0, high=1.0)
        check_real(FLAGS["confidence"], self.confidence, low=0.0, high=0.999, low_open=True)
        if (not isinstance(self.sizes, tuple) or not self.sizes
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.sizes)):
            raise ValueError(f"{FLAGS['sizes']} must be a comma list of ints >= 1, got {_show(self.sizes)}")
        for name, allowed in (("estimators", ESTIMATOR_NAMES), ("baselines", BASELINE_NAMES)):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values or any(v not in allowed for v in values):
                raise ValueError(f"{FLAGS[name]} must be a comma list out of {','.join(allowed)}, "
                                 f"got {_show(values)}")
        check_choice(FLAGS["policy"], self.policy, POLICY_NAMES)
        check_choice(FLAGS["engine"], self.engine, ENGINE_NAMES)
        if self.engine != "func" and importlib.util.find_spec(self.engine) is None:
            raise ValueError(f"{FLAGS['engine']} {self.engine} needs the {self.engine!r} package, which is not "
                             "installed; install it or use --engine func")
        return self

    def resolved(self) -> Settings:
        """These settings with ``--quick`` applied and repeated names dropped (after :meth:`validate`)."""
        s = dataclasses.replace(self, **QUICK) if self.quick else self
        return dataclasses.replace(s, estimators=tuple(dict.fromkeys(s.estimators)),
                                   baselines=tuple(dict.fromkeys(s.baselines)))


#: Settings field -> command-line flag, for error messages.
FLAGS = dataclass_flags(Settings)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return repr(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``estimator-study`` flags to ``parser``: one per :class:`Settings` field."""
    add_dataclass_arguments(parser, Settings)


def _check(settings: Settings) -> Settings:
    """Check everything before any work: the settings, ``--out`` and the plot's matplotlib."""
    settings.validate()
    check_outputs(Path(settings.out), plot=settings.plot)
    from metaopt.experiments.estimator_study._report import OUTPUTS

    check_no_results(Path(settings.out), OUTPUTS.values(), overwrite=settings.overwrite)
    return settings.resolved()


def run_study(
    settings: Settings, *, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """Run the study for each baseline (the global RNG state is left as it was).

    Returns:
        ``(results, samples)``: the JSON-safe results (``{"settings", "studies": {baseline: ...},
        "wall_time_s"}``) and the raw samples per baseline (``samples_out`` of :func:`run_estimator_study`).
    """
    import torch

    from metaopt.experiments.estimator_study._study import run_estimator_study
    from metaopt.verify.estimators import make_problem

    start = time.perf_counter()
    studies: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, Tensor]] = {}
    with torch.random.fork_rng(devices=[]):
        for baseline in settings.baselines:
            log(f"baseline = {baseline}")
            problem = make_problem(policy=settings.policy, num_tasks=settings.num_tasks, horizon=settings.horizon,
                                   lr=settings.lr, gamma=settings.gamma, baseline=baseline, seed=settings.seed)
            study = run_estimator_study(problem, estimators=settings.estimators, sizes=settings.sizes,
                                        repeats=settings.repeats, engine=settings.engine,
                                        bootstrap=settings.bootstrap, confidence=settings.confidence,
                                        seed=settings.seed, log=log, samples_out=samples.setdefault(baseline, {}))
            study["settings"]["estimators"] = list(settings.estimators)
            studies[baseline] = study
    flat = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}
    results = {"settings": flat, "studies": studies, "wall_time_s": time.perf_counter() - start}
    return results, samples


def run(args: argparse.Namespace) -> int:
    """Run the study from parsed arguments, write the outputs and print the table.

    Returns:
        0, or 2 for bad input (one ``error:`` line on stderr naming the flag, nothing written).
    """
    try:
        settings = _check(dataclass_from_args(Settings, args))
    except (TypeError, ValueError) as err:
        print(f"metaopt estimator-study: error: {err}", file=sys.stderr)
        return 2
    results, samples = run_study(settings)
    paths = write_outputs(results, settings.out, plot=settings.plot,
                          samples=samples if settings.save_samples else None)
    print(format_markdown(results))
    print(f"total time {results['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0
