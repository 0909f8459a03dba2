"""Crash-safe outputs: atomic file writes and output folders that appear whole or not at all.

Files are written to a temporary name in the destination folder, flushed to disk and renamed
into place (``os.replace``), so a reader never sees half a file. A whole run's outputs are
written into a hidden staging folder ``.OUT.partial-<pid>`` beside ``OUT`` and renamed to
``OUT`` only when everything succeeded (:func:`staged_output`).

An output folder is safe to use when it is absent or empty. A folder that holds files is
refused unless ``overwrite=True``, and even then only when it carries the marker file
(``defectscope-run.json``) that records that defectscope made it: ``--overwrite`` never deletes
a folder of someone else's files (for example the input images).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from defectscope import __version__
from defectscope.errors import DefectscopeError

DEFAULT_MARKER = "defectscope-run.json"
MARKER_TOOL = "defectscope"
_IGNORABLE_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _default_file_mode() -> int:
    """Permissions a newly created file would get from ``open`` (0o666 minus the umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _fsync_directory(folder: Path) -> None:
    """Flush a directory entry to disk where the platform allows it (POSIX)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    ``sync=False`` skips both fsyncs (the file is still complete or absent for any reader): for
    many files written together, which the caller then makes durable at once with
    :func:`sync_files` (one ``syncfs`` on Linux instead of two fsyncs per file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        mode = path.stat().st_mode & 0o777 if path.exists() else _default_file_mode()
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    if sync:
        _fsync_directory(path.parent)
    return path


def _syncfs(folder: Path) -> bool:
    """Flush the file system holding ``folder`` (Linux ``syncfs``); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return function(fd) == 0
    finally:
        os.close(fd)


def sync_files(paths: Iterable[str | Path]) -> None:
    """Make files written with ``atomic_write_bytes(..., sync=False)`` durable, with their folders:
    one ``syncfs`` of their file system on Linux, else an fsync of each file and folder."""
    files = [Path(p) for p in paths]
    if not files:
        return
    folders = sorted({f.parent for f in files})
    if len({os.stat(folder).st_dev for folder in folders}) == 1 and _syncfs(folders[0]):
        return
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in folders:
        _fsync_directory(folder)


def cut_torn_line(path: Path) -> None:
    """Cut a journal's torn last line (a kill in the middle of an append) so that every line left
    is whole; fsynced. Nothing happens when the file is absent or ends with a newline."""
    if not path.exists():
        return
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(cut)
            os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


@dataclass(frozen=True)
class OutputFolder:
    """An output folder that is ready to be written to.

    Attributes:
        path: the folder.
        marker: the marker file inside it that records that defectscope made it.
        replaced: True when a previous defectscope run's outputs were removed (``overwrite``).
    """

    path: Path
    marker: Path
    replaced: bool


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) inside dicts, lists and tuples as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_text(payload: Any, **options: Any) -> str:
    """Standard JSON for a file others read: ``json.dumps`` would write inf and nan as
    ``Infinity`` / ``NaN``, which strict readers refuse; here they are ``null`` (no finite
    value). Objects JSON cannot hold are written as ``str``, as in every output file."""
    return json.dumps(_finite(payload), allow_nan=False, default=str, **options)


def _marker_payload() -> dict[str, Any]:
    return {
        "tool": MARKER_TOOL,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_marker(folder: str | Path, marker: str = DEFAULT_MARKER, data: dict[str, Any] | None = None) -> Path:
    """Write the marker file into ``folder``; ``data`` adds fields (e.g. the run's settings)."""
    payload = _marker_payload()
    if data:
        payload.update({key: value for key, value in data.items() if key != "tool"})
    return atomic_write_text(Path(folder) / marker, json_text(payload, indent=2, sort_keys=True))


def is_defectscope_folder(folder: str | Path, marker: str = DEFAULT_MARKER) -> bool:
    """True when ``folder`` holds a readable marker file written by defectscope."""
    marker_path = Path(folder) / marker
    try:
        payload = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("tool") == MARKER_TOOL


def _holds_files(folder: Path) -> bool:
    return any(entry.name not in _IGNORABLE_FILES for entry in folder.iterdir())


def _check_output_dir(out: Path, overwrite: bool, marker: str) -> bool:
    """Raise unless ``out`` may be used; return True when it holds a previous run to replace."""
    if out.is_symlink():
        raise DefectscopeError(f"output folder '{out}' is a symbolic link; give the real folder instead")
    if not out.exists():
        return False
    if not out.is_dir():
        raise DefectscopeError(f"output path '{out}' exists and is not a folder; choose another output folder")
    if not _holds_files(out):
        return False
    if not overwrite:
        raise DefectscopeError(
            f"output folder '{out}' already holds files; choose another folder or pass --overwrite to replace it"
        )
    if not is_defectscope_folder(out, marker):
        raise DefectscopeError(
            f"output folder '{out}' holds files that defectscope did not write (no {marker}), "
            "so it will not be overwritten; choose another or an empty folder"
        )
    return True


def _clear_folder(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prepare_output_dir(
    out: str | Path,
    *,
    overwrite: bool,
    marker: str = DEFAULT_MARKER,
    marker_data: dict[str, Any] | None = None,
) -> OutputFolder:
    """Create ``out`` (absent or empty) or, with ``overwrite``, empty a previous run's folder.

    Writes the marker file. Raises DefectscopeError when ``out`` holds files and ``overwrite``
    is False, or holds files without the marker. For crash safety prefer :func:`staged_output`.
    """
    out = Path(out).absolute()
    replaced = _check_output_dir(out, overwrite, marker)
    if replaced:
        _clear_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    marker_path = write_marker(out, marker, marker_data)
    return OutputFolder(path=out, marker=marker_path, replaced=replaced)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Remove staging/backup folders beside ``out`` left by processes that no longer run."""
    for kind in ("partial", "old"):
        prefix = f".{out.name}.{kind}-"
        for candidate in out.parent.glob(f"{prefix}*"):
            pid_text = candidate.name[len(prefix):]
            if pid_text.isdigit() and candidate.is_dir() and not candidate.is_symlink():
                pid = int(pid_text)
                if pid == os.getpid() or not _pid_alive(pid):
                    shutil.rmtree(candidate, ignore_errors=True)


def _commit(staging: Path, out: Path, overwrite: bool, marker: str) -> None:
    """Move the finished staging folder to ``out``, replacing an empty or previous-run folder."""
    _check_output_dir(out, overwrite, marker)
    if not out.exists():
        os.replace(staging, out)
        _fsync_directory(out.parent)
        return
    backup = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(backup, out)
        raise
    _fsync_directory(out.parent)
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staged_output(
    out: str | Path,
    overwrite: bool = False,
    *,
    marker: str = DEFAULT_MARKER,
    marker_data: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a hidden staging folder to write a run's outputs into; on success it becomes ``out``.

    ``out`` is checked before any work starts (same rules as :func:`prepare_output_dir`) and
    again at commit. On success the marker file is written and the staging folder
    ``.OUT.partial-<pid>`` is renamed to ``out`` (a previous run's folder is moved aside first,
    then deleted). On any exception, Ctrl-C included, the staging folder is removed and ``out``
    is left as it was. A killed process can leave a hidden staging folder; the next run
    removes it.
    """
    out = Path(out).absolute()
    _check_output_dir(out, overwrite, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        write_marker(staging, marker, marker_data)
        _commit(staging, out, overwrite, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
