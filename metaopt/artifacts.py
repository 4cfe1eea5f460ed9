"""Writing run artifacts: one atomic-write helper for every file metaopt produces.

Every artifact (checkpoints, CSV/JSON metrics, reports, plots) is written into a temporary file in the target
directory, flushed and fsynced, then renamed over the target with :func:`os.replace`, and the directory entry is
fsynced: a reader, or a run resumed after a crash or ``kill -9``, sees the old or the new file, never a partial
one. If writing fails, the old file is untouched and the temporary is removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_text", "write_json", "write_csv", "csv_text", "save_figure",
           "remove_stale_temporaries", "check_out_dir", "check_outputs", "check_plotting"]


def atomic_write(path: Path | str, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing into a binary file) to ``path`` atomically.

    The file gets the usual permissions (``0666`` minus the umask). A process killed mid-write can leave a
    ``.NAME.XXXXXXXX`` temporary beside the target; :func:`remove_stale_temporaries` clears those.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, bytes | bytearray):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return path
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, text)


def write_json(path: Path | str, obj: Any, *, indent: int | None = 2, allow_nan: bool = True) -> Path:
    """Atomically write ``obj`` as JSON (with a trailing newline); ``allow_nan=False`` rejects NaN/inf."""
    return atomic_write(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text of dict rows; the header is the union of their keys in first-seen order."""
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path | str, rows: Iterable[dict[str, Any]]) -> Path:
    """Atomically write dict rows as CSV."""
    return atomic_write(path, csv_text(rows))


def save_figure(fig: Any, path: Path | str, *, dpi: int = 110) -> Path:
    """Atomically save a matplotlib figure as PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def remove_stale_temporaries(out: Path, names: Iterable[str]) -> None:
    """Remove the temporaries :func:`atomic_write` leaves beside ``names`` in ``out`` when killed mid-write."""
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in names) + r")\.[A-Za-z0-9_]{8}")
    for p in out.iterdir():
        if pattern.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """Fail early, before anything is written, if ``out`` cannot be an output directory."""
    p = Path(out)
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"{flag} must be a directory path, got {str(out)!r} ({str(p)!r} is a file)")
    if not os.access(p, os.W_OK):
        raise ValueError(f"{flag} must be writable, got {str(out)!r} ({str(p)!r} is not writable)")


def check_plotting(plot: bool) -> None:
    """Fail before any work when the PNG plots are asked for (``plot``) and matplotlib cannot be imported.

    Raises:
        ValueError: naming ``--no-plot`` and the extra that installs matplotlib.
    """
    if not plot:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ValueError(f"the PNG plots need matplotlib, which is not installed ({e}): pass --no-plot to skip "
                         f"them, or pip install 'metaopt-torch[plot]'") from e


def check_outputs(out: Path, *, plot: bool) -> None:
    """:func:`check_out_dir` for ``--out``, and with ``plot`` :func:`check_plotting` (for ``--plot``)."""
    check_out_dir(out)
    check_plotting(plot)
