"""Fig. 1a's constants, the methods' hyperparameters, the protocols, and the checks of the experiment's arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from metaopt._validation import check_choice, check_open_unit_interval, check_positive

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
    "resolve_protocol",
]

#: Input width: a target's binary code, zero-padded to this many bits.
BITS = 16
#: Ordinary targets are uniform integers in ``0 .. MAX_TARGET``.
MAX_TARGET = 1023
#: The outlier target (all bits set).
OUTLIER_TARGET = 2**BITS - 1
#: Every this many samples, one target is the outlier.
OUTLIER_PERIOD = 1000
#: Hidden layer sizes of the body (four tanh layers of 10 units).
HIDDEN = (10, 10, 10, 10)


class MethodSpec(NamedTuple):
    """Hyperparameters of one method.

    Attributes:
        lr: SGD step size ``alpha``.
        beta: ART step size, or ``None`` for plain SGD on unnormalized targets.
        pop: Whether POP rescales the last layer after each ART update.
    """

    lr: float
    beta: float | None
    pop: bool


#: The paper's hyperparameters (Fig. 1a).
DEFAULT_METHODS: dict[str, MethodSpec] = {
    "sgd": MethodSpec(lr=10**-3.5, beta=None, pop=False),
    "art": MethodSpec(lr=10**-2.5, beta=1e-4, pop=False),
    "popart": MethodSpec(lr=10**-2.5, beta=10**-0.5, pop=True),
}

#: Simulation dtypes by name (``--dtype``).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: When the test error of sample ``t`` is recorded, relative to ART (and POP) on ``Y_t``.
RECORD_CHOICES = ("before", "after")
#: How the output layer starts: PyTorch's ``nn.Linear`` init, or ``weight = 1, bias = 0``.
HEAD_INITS = ("default", "ones")


class Protocol(NamedTuple):
    """Choices of a Fig. 1a run beyond the methods' hyperparameters (see the module docstring).

    Attributes:
        record: ``"before"``: the test error of sample ``t`` uses the statistics before ART sees ``Y_t``;
            ``"after"``: ART (and POP) run on ``Y_t`` first and the error uses the new statistics
            ``|sigma' n(x_t) + mu' - Y_t|`` (with POP ``f(x_t)`` is unchanged, so only ART is affected).
        head_init: ``"default"`` (``nn.Linear``'s init) or ``"ones"`` (``weight = 1``, ``bias = 0``).
        art_lr: ART's SGD step size.
    """

    record: str
    head_init: str
    art_lr: float


#: ``paper``: the paper's hyperparameters and the natural reading of its protocol (the default).
#: ``reproduction``: the seed author's reproduction (Pop-Art-Translation, ``Agent.py``).
PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(record="before", head_init="default", art_lr=10**-2.5),
    "reproduction": Protocol(record="after", head_init="ones", art_lr=10**-3.5),
}



# ----------------------------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _parse_methods(methods: str | Sequence[str], name: str = "methods") -> tuple[str, ...]:
    chosen = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    if not chosen or any(not isinstance(m, str) or not m for m in chosen):
        raise ValueError(f"{name} must be a non-empty list of names from {sorted(DEFAULT_METHODS)}, got {methods!r}")
    unknown = [m for m in chosen if m not in DEFAULT_METHODS]
    if unknown:
        raise ValueError(
            f"{name}: unknown method(s) {unknown} in {methods!r}; expected names from {sorted(DEFAULT_METHODS)}"
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{name} must not repeat a method, got {methods!r}")
    return tuple(chosen)


def _parse_dtype(dtype: str | torch.dtype, name: str = "dtype") -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {dtype!r}")


def resolve_protocol(
    protocol: str | Protocol = "paper",
    *,
    art_lr: float | None = None,
    record: str | None = None,
    head_init: str | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[str, Protocol]:
    """A protocol by name (or as given) with optional overrides of single choices, validated.

    Args:
        protocol: A name from :data:`PROTOCOLS` or a :class:`Protocol`.
        art_lr: Override of the protocol's ART learning rate.
        record: Override of the protocol's ``record`` choice.
        head_init: Override of the protocol's ``head_init`` choice.
        names: How to name the arguments in error messages (e.g. ``{"art_lr": "--art-lr"}``); unlisted
            arguments keep their own name.

    Returns:
        ``(name, protocol)``: the name is the matching entry of :data:`PROTOCOLS`, else ``"custom"``.
    """
    names = names or {}
    if isinstance(protocol, Protocol):
        base = protocol
    else:
        base = PROTOCOLS[check_choice(names.get("protocol", "protocol"), protocol, tuple(PROTOCOLS))]
    if art_lr is not None:
        check_positive(names.get("art_lr", "art_lr"), art_lr)
        base = base._replace(art_lr=float(art_lr))
    if record is not None:
        base = base._replace(record=record)
    if head_init is not None:
        base = base._replace(head_init=head_init)
    check_choice(names.get("record", "record"), base.record, RECORD_CHOICES)
    check_choice(names.get("head_init", "head_init"), base.head_init, HEAD_INITS)
    check_positive(names.get("art_lr", "art_lr"), base.art_lr)
    name = next((k for k, v in PROTOCOLS.items() if v == base), "custom")
    return name, base


class _Checked(NamedTuple):
    """The arguments of a run after :func:`_check_arguments`."""

    methods: tuple[str, ...]
    dtype: torch.dtype
    protocol_name: str
    protocol: Protocol
    popart: MethodSpec
    online: Any


def _check_arguments(
    *,
    seeds: int,
    steps: int,
    methods: str | Sequence[str],
    protocol: str | Protocol,
    art_lr: float | None,
    record: str | None,
    head_init: str | None,
    dtype: str | torch.dtype,
    seed: int,
    window: int,
    learn: str | Sequence[str] = (),
    beta: float | None = None,
    lr: float | None = None,
    truncation: int = 10,
    meta_lr: float = 3e-2,
    meta_scale: str = "sigma",
    huber: float | None = 1.0,
    carry: bool = True,
    reattach: str = "pop",
    mode: str = "truncated",
    names: Mapping[str, str] | None = None,
) -> _Checked:
    """Check the arguments of :func:`run_experiment` (the one place that does); messages name them by ``names``."""
    names = names or {}

    def n(arg: str) -> str:
        return names.get(arg, arg)

    _check_int(n("seeds"), seeds, 1)
    _check_int(n("steps"), steps, 1)
    _check_int(n("seed"), seed, 0)
    _check_int(n("window"), window, 1)
    chosen = _parse_methods(methods, n("methods"))
    torch_dtype = _parse_dtype(dtype, n("dtype"))
    protocol_name, proto = resolve_protocol(protocol, art_lr=art_lr, record=record, head_init=head_init, names=names)
    from metaopt.experiments.popart_regression._online import check_online  # _online imports this module

    popart_spec = DEFAULT_METHODS["popart"]
    if beta is not None:
        check_open_unit_interval(n("beta"), beta)
        popart_spec = popart_spec._replace(beta=float(beta))
    if lr is not None:
        check_positive(n("lr"), lr)
        popart_spec = popart_spec._replace(lr=float(lr))
    online = check_online(learn=learn, truncation=truncation, meta_lr=meta_lr, meta_scale=meta_scale, huber=huber,
                          carry=carry, reattach=reattach, mode=mode, names=names)
    if online is not None and "popart" not in chosen:
        raise ValueError(f"{n('learn')}={','.join(online.learn)} learns PopArt's hyperparameters, but "
                         f"{n('methods')}={','.join(chosen)} does not run popart")
    return _Checked(chosen, torch_dtype, protocol_name, proto, popart_spec, online)
