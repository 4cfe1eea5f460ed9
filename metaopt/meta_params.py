"""Learnable inner-loop hyperparameters: the inner learning rate and PopArt's step size beta.

Both are stored in unconstrained coordinates so that any outer optimizer keeps them valid:

* ``lr = exp(log_lr)`` stays positive (a scalar, or one rate per parameter tensor, Meta-SGD style);
* ``beta = sigmoid(logit_beta)`` stays inside ``(0, 1)``.

Users choose which are learned (``learn=("lr", "beta")``); the others are buffers without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from metaopt._validation import check_open_unit_interval, check_positive

__all__ = ["MetaParameters", "LEARNABLE", "check_representable"]

#: Meta-parameters that can be learned (``MetaParameters(learn=...)``, ``--learn``).
LEARNABLE = ("lr", "beta")


def check_representable(lr: float, beta: float, dtype: torch.dtype, *, lr_name: str = "lr",
                        beta_name: str = "beta") -> None:
    """Check that ``exp(log lr)`` and ``sigmoid(logit beta)`` round-trip in ``dtype`` to usable values.

    ``lr = exp(log_lr)`` must be positive and finite and ``beta = sigmoid(logit_beta)`` strictly inside
    ``(0, 1)`` once stored in ``dtype`` (``lr=1e-50`` is 0 in float32, ``beta=1e-300`` is 0 in float32).

    Example:
        >>> check_representable(1e-50, 0.1, torch.float64)  # 1e-50 is a float64 number
        >>> try:
        ...     check_representable(1e-50, 0.1, torch.float32)  # exp(log 1e-50) underflows to 0 in float32
        ... except ValueError as err:
        ...     print(str(err).split(";")[0])
        lr must be representable in torch.float32 (exp(log lr) positive and finite), got 1e-50
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype (e.g. torch.float32), got {dtype!r}")
    info = torch.finfo(dtype)
    log_lr = torch.tensor(math.log(lr), dtype=dtype, device="cpu")
    value = float(log_lr.exp())
    if not (0 < value < math.inf):
        raise ValueError(f"{lr_name} must be representable in {dtype} (exp(log lr) positive and finite), got {lr!r}; "
                         f"expected a value in [{info.tiny:.2g}, {info.max:.2g}]")
    b = float(torch.sigmoid(torch.tensor(math.log(beta) - math.log1p(-beta), dtype=dtype, device="cpu")))
    if not (0 < b < 1):
        raise ValueError(f"{beta_name} must be representable in {dtype} strictly inside (0, 1) (sigmoid(logit beta)), "
                         f"got {beta!r} (it rounds to {b}); expected a value in [{info.tiny:.2g}, 1 - {info.eps:.2g}]")


def _key(name: str) -> str:
    return name.replace(".", "__")


class MetaParameters(nn.Module):
    """Inner learning rate(s) and PopArt beta as meta-parameters.

    Args:
        lr: Initial inner learning rate (> 0).
        beta: Initial PopArt step size in ``(0, 1)``.
        learn: Which of ``"lr"``, ``"beta"`` receive meta-gradients (a collection of names; one name as a string,
            ``"lr"``, means ``("lr",)``).
        per_parameter: Parameter names that each get their own learning rate (Meta-SGD); ``None`` means
            one scalar rate for all.
        dtype: Floating dtype (``lr`` and ``beta`` must be representable in it, see :func:`check_representable`).
        device: Device of the meta-parameters.
    """

    log_lr: Tensor  # registered as a parameter (learned) or a buffer (fixed); absent with per_parameter
    logit_beta: Tensor

    def __init__(
        self,
        *,
        lr: float = 0.1,
        beta: float = 0.1,
        learn: Iterable[str] = (),
        per_parameter: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("lr", lr)
        check_open_unit_interval("beta", beta)
        if isinstance(learn, str):
            if learn not in LEARNABLE:
                raise ValueError(f"learn must be a collection of names from {LEARNABLE} (e.g. ('lr', 'beta')), got the "
                                 f"string {learn!r}")
            learn = (learn,)
        learn = tuple(learn)
        unknown = [x for x in learn if x not in LEARNABLE]
        if unknown:
            raise ValueError(f"learn must be a subset of {LEARNABLE}, got {learn!r} (unknown: {unknown})")
        self.learn = learn
        self.per_parameter = tuple(per_parameter) if per_parameter is not None else None
        dtype = dtype or torch.get_default_dtype()
        if isinstance(lr, Tensor) or isinstance(beta, Tensor):
            lr, beta = float(lr), float(beta)
        check_representable(lr, beta, dtype)

        def make(value: float, learned: bool) -> Tensor:
            t = torch.tensor(value, dtype=dtype, device=device)
            return nn.Parameter(t) if learned else t

        if self.per_parameter is None:
            self._set("log_lr", make(math.log(lr), "lr" in learn))
        else:
            self.log_lrs: nn.ParameterDict | dict[str, Tensor] = nn.ParameterDict() if "lr" in learn else {}
            for name in self.per_parameter:
                t = make(math.log(lr), "lr" in learn)
                if "lr" in learn:
                    self.log_lrs[_key(name)] = t
                else:
                    self.register_buffer(f"log_lr__{_key(name)}", t)
        self._set("logit_beta", make(math.log(beta) - math.log1p(-beta), "beta" in learn))

    def _set(self, name: str, value: Tensor) -> None:
        if isinstance(value, nn.Parameter):
            self.register_parameter(name, value)
        else:
            self.register_buffer(name, value)

    def _tensor(self, name: str) -> Tensor:
        t = getattr(self, name)
        assert isinstance(t, Tensor)
        return t

    @property
    def lr(self) -> Tensor | dict[str, Tensor]:
        """The inner learning rate ``exp(log_lr)``: a 0-dim tensor, or a dict name -> 0-dim tensor (Meta-SGD).

        A property (``meta.lr.detach()``), differentiable to ``log_lr`` when ``"lr"`` is learned.
        """
        if self.per_parameter is None:
            return self._tensor("log_lr").exp()
        if "lr" in self.learn:
            return {n: self.log_lrs[_key(n)].exp() for n in self.per_parameter}
        return {n: self._tensor(f"log_lr__{_key(n)}").exp() for n in self.per_parameter}

    def lr_by_name(self, names: Iterable[str]) -> dict[str, Tensor]:
        """One learning rate per parameter name: the shared rate repeated, or each parameter's own.

        The single representation the engines use (no scalar-vs-dict branching downstream).

        Raises:
            ValueError: per-parameter rates that do not name every one of ``names``.
        """
        names = list(names)
        lr = self.lr
        if isinstance(lr, dict):
            missing = [n for n in names if n not in lr]
            if missing:
                raise ValueError(f"per_parameter must name every model parameter; missing {missing}")
            return {n: lr[n] for n in names}
        return dict.fromkeys(names, lr)

    @property
    def beta(self) -> Tensor:
        """PopArt's step size ``sigmoid(logit_beta)`` (0-dim tensor in ``(0, 1)``); a property."""
        return torch.sigmoid(self._tensor("logit_beta"))

    def summary(self) -> dict[str, float]:
        """Current values as plain floats (the mean rate when per-parameter)."""
        lr = self.lr
        lr_value = float(torch.stack(list(lr.values())).detach().mean()) if isinstance(lr, dict) else float(lr.detach())
        return {"lr": lr_value, "beta": float(self.beta.detach())}
