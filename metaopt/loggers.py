"""Scalar loggers behind one interface: CSV, TensorBoard and Weights & Biases.

A logger receives ``log(metrics, step)`` calls with a flat mapping of names to numbers (namespaced with
``/`` as in cleanrl: ``train/pre_return``, ``meta/beta``) and is closed once at the end. :class:`CSVLogger`
needs nothing beyond the standard library; :class:`TensorBoardLogger` needs the ``tensorboard`` package
(``pip install 'metaopt-torch[tensorboard]'``) and :class:`WandbLogger` the ``wandb`` package
(``pip install 'metaopt-torch[wandb]'``); both import their library only when constructed and fail then with a
message naming the extra to install. :class:`MultiLogger` fans one call out to several loggers.

Example:
    >>> import csv, tempfile
    >>> from pathlib import Path
    >>> from metaopt.loggers import CSVLogger
    >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
    >>> with CSVLogger(path) as log:
    ...     log.log({"train/loss": 0.5}, step=1)
    ...     log.log({"train/loss": 0.25, "meta/beta": 0.1}, step=2)
    >>> [row["meta/beta"] for row in csv.DictReader(path.open())]
    ['', '0.1']
"""

from __future__ import annotations

import csv
import importlib
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["BACKENDS", "Logger", "CSVLogger", "TensorBoardLogger", "WandbLogger", "MultiLogger", "require"]

#: Backend name -> (module to import, the extra that installs it); ``csv`` needs nothing.
BACKENDS: dict[str, tuple[str | None, str | None]] = {
    "csv": (None, None),
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


@runtime_checkable
class Logger(Protocol):
    """What a training loop needs from a logger."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` (name -> number) at ``step``."""

    def close(self) -> None:
        """Flush and release the backend; the logger is not used afterwards."""


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return int(step)


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Check that every value is a real number (bools and tensors with one element are accepted)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a 0-d tensor or numpy scalar
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a real number, got {type(value).__name__} {value!r}")
        out[name] = float(value)
    return out


def _optional(module: str, extra: str, who: str) -> ModuleType:
    """Import an optional backend library or fail with one message naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{who} needs the optional package {extra!r}, which is not installed: "
            f"pip install 'metaopt-torch[{extra}]'"
        ) from err


_C = TypeVar("_C", bound="_Closing")


def require(backend: str) -> None:
    """Check that ``backend``'s library is importable, without creating a logger (or any file).

    Call it with the other input checks, before a run writes anything.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        ImportError: its library is not installed (the message names the extra to install).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    module, extra = BACKENDS[backend]
    if module is not None and extra is not None:
        if backend == "tensorboard":  # the package itself: torch.utils.tensorboard may be imported already
            _optional("tensorboard", extra, f"the {backend!r} logger")
        _optional(module, extra, f"the {backend!r} logger")


class _Closing:
    """Context-manager support: ``with Logger(...) as log:`` closes it on exit."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class CSVLogger(_Closing):
    """One CSV row per ``log`` call: a ``step`` column, then one column per metric name.

    Rows are appended as they come; when a call brings a new metric name the file is rewritten with the
    wider header (earlier rows get empty cells), so the file is a valid CSV after every call.

    Args:
        path: The CSV file (its directory is created; an existing file is replaced).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, float]] = []
        self._columns: list[str] = ["step"]
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Append one row (``step`` plus ``metrics``)."""
        row: dict[str, float] = {"step": _check_step(step)} | _scalars(metrics)
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def close(self) -> None:
        """Nothing to release: every row is on disk when :meth:`log` returns."""


class TensorBoardLogger(_Closing):
    """Scalars into TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``).

    Args:
        log_dir: Directory of the event files (``tensorboard --logdir`` on it or on a parent).
        **kwargs: Passed to ``SummaryWriter`` (e.g. ``flush_secs``).

    Raises:
        ImportError: ``tensorboard`` is not installed (the message names the extra to install).
    """

    def __init__(self, log_dir: str | Path, **kwargs: Any) -> None:
        _optional("tensorboard", "tensorboard", "TensorBoardLogger")
        summary = _optional("torch.utils.tensorboard", "tensorboard", "TensorBoardLogger")
        self.log_dir = Path(log_dir)
        self.writer = summary.SummaryWriter(log_dir=str(self.log_dir), **kwargs)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Add one scalar per metric at ``step`` (non-finite values are written as they are)."""
        step = _check_step(step)
        for name, value in _scalars(metrics).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush the event file and close it."""
        self.writer.close()


class WandbLogger(_Closing):
    """Scalars into a Weights & Biases run (``wandb.init`` on construction, ``run.finish`` on close).

    Args:
        project: The W&B project.
        name: The run's name (e.g. cleanrl's ``env__experiment__seed``).
        config: The run's configuration (shown and searchable in the W&B UI).
        mode: ``"online"``, ``"offline"`` (sync later with ``wandb sync``) or ``"disabled"``; ``None`` lets
            W&B decide (its ``WANDB_MODE`` environment variable).
        **kwargs: Passed to ``wandb.init`` (``entity``, ``dir``, ``group``, ``tags``, ...).

    Raises:
        ImportError: ``wandb`` is not installed (the message names the extra to install).
    """

    def __init__(
        self,
        project: str,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"mode must be None, 'online', 'offline' or 'disabled', got {mode!r}")
        wandb = _optional("wandb", "wandb", "WandbLogger")
        self.run = wandb.init(project=project, name=name, config=dict(config or {}), mode=mode, **kwargs)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log all ``metrics`` as one W&B step (steps must not decrease, as W&B requires)."""
        self.run.log(_scalars(metrics), step=_check_step(step))

    def close(self) -> None:
        """Finish the run (uploads what is left when online)."""
        self.run.finish()


class MultiLogger(_Closing):
    """Send every call to several loggers, in order.

    Args:
        loggers: The loggers (any objects with ``log(metrics, step)`` and ``close()``).
    """

    def __init__(self, loggers: Iterable[Logger]) -> None:
        self.loggers = list(loggers)
        for i, lg in enumerate(self.loggers):
            if not isinstance(lg, Logger):
                raise TypeError(f"loggers[{i}] must have log(metrics, step) and close(), got {type(lg).__name__}")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log to every logger."""
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        """Close every logger (all of them, even if one fails; the first error is raised)."""
        error: BaseException | None = None
        for lg in self.loggers:
            try:
                lg.close()
            except BaseException as err:  # re-raised below, after the others are closed
                error = error or err
        if error is not None:
            raise error
