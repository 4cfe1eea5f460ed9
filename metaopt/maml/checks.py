"""Failure checks of a meta-iteration: which iteration and which tasks made a loss or the meta-gradient NaN/inf."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metaopt.envs import num_tasks_of

if TYPE_CHECKING:
    from metaopt.maml.learner import IterationData, MetaLearner

__all__ = ["NonFiniteError", "check_finite", "nonfinite_gradient_tasks"]

#: Per-task quantities of an iteration, in the order of the rows of ``MetaGradient.per_task``.
PER_TASK = ("policy_loss", "value_loss", "pre_return", "post_return", "scales", "inner_ok")


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN/inf; carries the iteration and the offending tasks."""

    def __init__(self, message: str, iteration: int, tasks: list[int]) -> None:
        super().__init__(message)
        self.iteration, self.tasks = iteration, tasks


def check_finite(learner: MetaLearner, per_task: Tensor, grads: list[Tensor],
                 gradient_tasks: Callable[[], list[int]]) -> None:
    """Raise :class:`NonFiniteError` naming the iteration and the tasks if a loss or the meta-gradient is bad.

    Every rank of a distributed run calls this with the same all-gathered ``per_task`` and all-reduced ``grads``,
    so all stop at the same point with the same message.

    Args:
        learner: The run (its iteration counter and parameter names).
        per_task: ``[6, n]`` values of all the iteration's tasks (:data:`PER_TASK` rows).
        grads: The (summed) meta-gradient.
        gradient_tasks: Called only when a gradient is non-finite: which tasks caused it.
    """
    it, rows = learner.iteration + 1, dict(zip(PER_TASK, per_task, strict=True))

    def bad(x: Tensor) -> list[int]:
        return (~torch.isfinite(x)).nonzero().flatten().tolist()

    inner = (rows["inner_ok"] == 0).nonzero().flatten().tolist()
    tasks = sorted(set(inner) | set(bad(rows["policy_loss"])) | set(bad(rows["value_loss"]))
                   | set(bad(rows["pre_return"])) | set(bad(rows["post_return"])))
    if tasks:
        causes = [f"{what} of task(s) {ts}" for what, ts in (
            ("non-finite rewards in the pre-adaptation rollout", bad(rows["pre_return"])),
            ("a non-finite inner loop (weights or PopArt statistics)", inner),
            ("non-finite rewards in the post-adaptation rollout", bad(rows["post_return"]))) if ts]
        detail = f" ({'; '.join(causes)})" if causes else ""
        raise NonFiniteError(f"non-finite outer loss at iteration {it} for task(s) {tasks}{detail}", it, tasks)
    params = [n for (n, _), g in zip(learner.named_parameters(), grads, strict=True) if not torch.isfinite(g).all()]
    if params:
        tasks = gradient_tasks()
        where = (f"from task(s) {tasks}" if tasks
                 else "(no single task's gradient is non-finite: their sum overflowed)")
        raise NonFiniteError(f"non-finite meta-gradient at iteration {it} in {params} {where}", it, tasks)


def nonfinite_gradient_tasks(learner: MetaLearner, data: IterationData, task_slice: slice | None = None
                             ) -> list[int]:
    """Which tasks of the slice have a non-finite meta-gradient (each recomputed alone; failure path only).

    Differentiating one entry of the batched per-task losses would send zero cotangents through the other tasks'
    graphs, and ``0 * inf`` there would flag every task.
    """
    sl = slice(0, num_tasks_of(data.tasks)) if task_slice is None else task_slice
    out = []
    for t in range(sl.start, sl.stop):
        grads = learner.meta_gradient(data, task_slice=slice(t, t + 1)).grads
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            out.append(t)
    return out

