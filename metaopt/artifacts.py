"""Writing run artifacts: one atomic-write helper for every file metaopt produces.

Every artifact (checkpoints, CSV/JSON metrics, reports, plots) is written into a temporary file in the target
directory, flushed and fsynced, then renamed over the target with :func:`os.replace`, and the directory entry is
fsynced: a reader, or a run resumed after a crash or ``kill -9``, sees the old or the new file, never a partial
one. If writing fails, the old file is untouched and the temporary is removed.

Temporaries are named ``.NAME.metaopt-tmp-XXXXXXXX``: :func:`remove_stale_temporaries` deletes only names of
that form (never a user's ``.NAME.notes``). :class:`OutDirLock` gives one run at a time an output directory
(an exclusive ``fcntl.flock`` on ``OUT/.lock``), so a run never touches another live run's files.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_text", "write_json", "write_csv", "csv_text", "save_figure",
           "remove_stale_temporaries", "check_out_dir", "check_outputs", "check_plotting", "check_new_file",
           "check_no_results", "OutDirLock", "OutDirBusyError", "tree_digest", "TEMP_MARKER", "LOCK_NAME"]

#: Marks the temporaries of :func:`atomic_write` (``.NAME.metaopt-tmp-XXXXXXXX``).
TEMP_MARKER = "metaopt-tmp-"
#: The lock file of an output directory (:class:`OutDirLock`).
LOCK_NAME = ".lock"


def atomic_write(path: Path | str, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing into a binary file) to ``path`` atomically.

    The file gets the usual permissions (``0666`` minus the umask). A process killed mid-write can leave a
    ``.NAME.metaopt-tmp-XXXXXXXX`` temporary beside the target; :func:`remove_stale_temporaries` clears those.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_MARKER}", dir=path.parent)
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
    """Remove the temporaries :func:`atomic_write` leaves beside ``names`` in ``out`` when killed mid-write.

    Only names of exactly the form ``.NAME.metaopt-tmp-XXXXXXXX`` (``XXXXXXXX`` from :func:`tempfile.mkstemp`)
    are removed; hold :class:`OutDirLock` on ``out`` so that no live run's temporary can match.
    """
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in names) + r")\." + re.escape(TEMP_MARKER)
                         + r"[A-Za-z0-9_]{8}")
    for p in out.iterdir():
        if pattern.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _path_limits(existing: Path) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` of the file system holding ``existing`` (255 and 4096 where unknown)."""
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):  # pragma: no cover - platforms without pathconf
        return 255, 4096


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """Fail early, before anything is written, if ``out`` cannot be an output directory.

    Checks that every component fits the file system's name limit, that the whole path fits its path limit,
    and that the nearest existing ancestor is a writable directory (a file system that takes no new entries,
    such as ``/proc``, is caught when :class:`OutDirLock` creates the directory, before anything is written).
    """
    out = Path(out)
    p = Path(os.path.abspath(out))
    while not _exists(p):
        p = p.parent
    name_max, path_max = _path_limits(p)
    long = [c for c in Path(os.path.abspath(out)).parts if len(os.fsencode(c)) > name_max]
    if long:
        raise ValueError(f"{flag} has a path component of {len(os.fsencode(long[0]))} bytes, expected at most "
                         f"{name_max} (the file system's limit), got {_shorten(out)!r}")
    if len(os.fsencode(os.path.abspath(out))) >= path_max:
        raise ValueError(f"{flag} is {len(os.fsencode(os.path.abspath(out)))} bytes long as an absolute path, "
                         f"expected fewer than {path_max} (the file system's limit), got {_shorten(out)!r}")
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


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. ENAMETOOLONG
        return False


def _shorten(path: Path | str, keep: int = 80) -> str:
    text = str(path)
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]} ({len(text)} characters)"


def check_new_file(path: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to replace an existing result file unless ``overwrite`` (``--overwrite``)."""
    if Path(path).exists() and not overwrite:
        raise ValueError(f"{flag} {str(path)!r} already holds a result ({Path(path).name}); expected a new path, "
                         "or --overwrite to replace it")


def check_no_results(out: Path, names: Iterable[str], *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an ``out`` that already holds any of the result files ``names`` unless ``overwrite``."""
    held = [n for n in names if (Path(out) / n).exists()]
    if held and not overwrite:
        raise ValueError(f"{flag} {str(out)!r} already holds results of an earlier run ({', '.join(held)}); "
                         "expected a new directory, or --overwrite to replace them")


def check_outputs(out: Path, *, plot: bool) -> None:
    """:func:`check_out_dir` for ``--out``, and with ``plot`` :func:`check_plotting` (for ``--plot``)."""
    check_out_dir(out)
    check_plotting(plot)


class OutDirBusyError(ValueError):
    """Another live process holds the output directory's lock (:class:`OutDirLock`)."""


class OutDirLock:
    """An exclusive advisory lock on an output directory: ``fcntl.flock`` on ``OUT/.lock``, held until released.

    :meth:`acquire` creates ``out`` (and its missing parents) and the lock file; :meth:`release` removes the
    lock file, and with ``clean=True`` also the directories that :meth:`acquire` created if they are still empty
    (so a run refused right after locking leaves nothing behind). The lock is per open file description: it dies
    with the process, so a killed run never leaves ``out`` locked. After locking, the lock file's identity is
    compared with the path's (a releasing process unlinks it), so two processes never both hold ``out``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "run"
        >>> lock = OutDirLock(d, flag="--out").acquire()
        >>> try:
        ...     OutDirLock(d, flag="--out").acquire()
        ... except OutDirBusyError as err:
        ...     print(str(err).split("'")[2].strip())
        is in use by another running process (it holds
        >>> lock.release(clean=True); d.exists()
        False
    """

    def __init__(self, out: Path, *, flag: str = "--out") -> None:
        self.out, self.flag = Path(out), flag
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.out / LOCK_NAME

    def acquire(self) -> OutDirLock:
        """Take the lock or raise :class:`OutDirBusyError` (a ``ValueError``) naming the flag; never waits."""
        missing = []
        p = self.out
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self._created.append(d)
        except OSError as err:
            self._remove_created()
            raise ValueError(f"{self.flag} cannot be created, got {str(self.out)!r} ({err.strerror or err})") from err
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                self._remove_created()
                raise ValueError(f"{self.flag} cannot hold the lock file {str(self.path)!r} "
                                 f"({err.strerror or err})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise OutDirBusyError(
                    f"{self.flag} {str(self.out)!r} is in use by another running process (it holds "
                    f"{str(self.path)!r}); expected a directory no other run is writing to") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)  # the holder released (and unlinked) it between our open and flock: try again
        raise OutDirBusyError(f"{self.flag} {str(self.out)!r}: could not take {str(self.path)!r} (it keeps being "
                              "replaced); expected a directory no other run is writing to")

    def release(self, *, clean: bool = False) -> None:
        """Remove the lock file and unlock (idempotent); ``clean`` also removes the still-empty created dirs."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if clean:
            self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def tree_digest(obj: Any) -> str:
    """SHA-256 of a tree of dicts, lists, tuples, tensors and scalars, by content (device- and layout-free).

    Tensors contribute their dtype, shape and bytes (on the CPU, contiguous); dict entries are taken in sorted
    key order; floats exactly (``float.hex``). Two trees get the same digest iff they hold the same values, so a
    checkpoint's digest survives loading onto another device.
    """
    import torch

    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for k in sorted(x, key=lambda k: (type(k).__name__, repr(k))):
                visit(k)
                visit(x[k])
        elif isinstance(x, list | tuple):
            h.update(f"{type(x).__name__[0]}{len(x)}:".encode())
            for v in x:
                visit(v)
        elif isinstance(x, float):
            h.update(f"f{x.hex()};".encode())
        elif x is None or isinstance(x, bool | int | str | bytes):
            h.update(f"{type(x).__name__}{x!r};".encode())
        else:
            raise TypeError(f"tree_digest: unsupported type {type(x).__name__}")

    visit(obj)
    return h.hexdigest()
