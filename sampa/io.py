"""Atomic file output: write to a temporary file in the same directory, then rename.

A failed write (permission, no space, not a directory) raises ``OSError`` carrying the path of the
file it was writing; its temporary file is removed. A process killed mid-write leaves the temporary
file (``.<name>.<owner>-<pid>.<random>.tmp``) behind: :func:`stale_temp_files` finds them for cleanup,
and the next write of the same file removes those whose writer is dead. ``<owner>`` names the kernel
boot and PID namespace the writer ran in (:func:`pid_namespace`), so only a writer whose PID this
process can look up is ever judged dead (never one on another machine or in another container); a
reused PID only makes a dead writer look alive, which leaves its file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sampa.faults import kill_point

if TYPE_CHECKING:
    import torch


TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_namespace() -> str:
    """A token for this kernel boot and this process's PID namespace ('' where /proc cannot tell): two
    processes with the same token can look up each other's PIDs."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.blake2b(f"{boot}:{namespace}".encode(), digest_size=8).hexdigest()


def _temp_prefix(path: Path, owner: str) -> str:
    return f".{path.name}.{owner}-{os.getpid()}." if owner else f".{path.name}."


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (in this PID namespace); unsure counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_dead_writers(path: Path, owner: str) -> None:
    """Remove the temporary files of ``path`` left by killed writers in ``owner``'s PID namespace."""
    if not owner:
        return
    head = f".{path.name}.{owner}-"
    with os.scandir(path.parent) as entries:
        leftovers = [e.name for e in entries if e.name.startswith(head) and e.name.endswith(TEMP_SUFFIX)]
    for name in leftovers:
        pid, dot, rest = name[len(head) : -len(TEMP_SUFFIX)].partition(".")
        if pid.isdecimal() and dot and "." not in rest and int(pid) > 0 and not _alive(int(pid)):
            (path.parent / name).unlink(missing_ok=True)


def _atomic(path: Path, write: Any, mode: str) -> None:
    owner = pid_namespace()
    try:
        _make_parent(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path, owner), suffix=TEMP_SUFFIX)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(err.filename or path)) from None
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the write succeeded; leftovers are only tidied
        remove_dead_writers(path, owner)


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder; a file in its place is "Not a directory" (mkdir says "File exists")."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None


def file_above(path: str | os.PathLike) -> str | None:
    """The file in the place of one of ``path``'s folders, if any (writing ``path`` would fail there)."""
    above = next(p for p in Path(path).absolute().parents if p.exists())
    return None if above.is_dir() else str(above)


def check_not_under_file(path: str, name: str, error: type[Exception]) -> None:
    """``error`` (one line naming ``name`` and the file) if a file is in the place of one of ``path``'s
    folders: checked before any work, so a write at the end does not fail there."""
    above = file_above(path)
    if above is not None:
        raise error(f"{name} {path!r} is under {above!r}, a file; give a path in a directory")


def stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Temporary files of interrupted atomic writes in ``directory`` (none if it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file())


def build_folder_once(
    root: Path, lock: str, temp: str, done: Callable[[], bool], build: Callable[[Path], None]
) -> None:
    """Unless ``done()``, ``build(tmp)`` under an exclusive lock ``<root>/.<lock>.lock`` in a fresh
    temporary folder ``<root>/.<temp>.<random>.tmp`` (normal permissions), removed afterwards: ``build``
    renames what it made (``tmp`` itself or a folder in it) into place once complete, so an interrupted
    build never leaves a folder that looks complete. ``done()`` is asked again under the lock (another
    process may have built it while this one waited); then the temporary folders of killed builders are
    removed."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{lock}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if done():
            return
        for stale in root.glob(f".{temp}.*{TEMP_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{temp}.", suffix=TEMP_SUFFIX))
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result may be a shared folder
            build(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    _atomic(Path(path), lambda h: h.write(text), "w")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    _atomic(Path(path), lambda h: h.write(data), "wb")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (byte-stable for equal input)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    write_text(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` (tensors, numbers, strings, lists and dicts only).

    Serialised in memory first, so a failed write is the plain ``OSError`` (e.g. "No space left on
    device") rather than torch's "unexpected pos" from inside its zip writer."""
    import io as stdio

    import torch  # here, not at the top: the presentation commands write files without torch

    buffer = stdio.BytesIO()
    torch.save(obj, buffer)
    _atomic(Path(path), lambda h: h.write(buffer.getbuffer()), "wb")


def load_torch(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by :func:`save_torch`; never unpickles arbitrary objects."""
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def read_yaml_mapping(path: str | os.PathLike, what: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping; anything else raises ``error`` with one line naming
    ``what`` the file is (e.g. "config file") and its path."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise error(f"cannot read {what} {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start})") from None
    except ValueError as err:  # a NUL byte in the path
        raise error(f"cannot read {what} {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{what} {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {str(path)!r} must hold a mapping")
    return data


def command_status(
    command: str, call: Callable[[], int], bad_input: Callable[[], tuple[type[Exception], ...]]
) -> int:
    """The exit status of command ``command`` (``call``), every expected error in one line on stderr:
    bad input (an exception of a class ``bad_input()`` returns; called only on an error, so a command
    imports no more than it needs) exits 2, a failed write (permission, no space, not a directory) 1, and a
    reader leaving the pipe (``| head``) ends it quietly (:func:`stdout_closed`), Ctrl-C is one line and
    status 130 (:func:`interrupted`). Anything else propagates."""
    try:
        return call()
    except KeyboardInterrupt as err:
        return interrupted(command, getattr(err, "hint", None))
    except BrokenPipeError:
        return stdout_closed()
    except OSError as err:
        print(f"sampa {command}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except Exception as err:
        if not isinstance(err, bad_input()):
            raise
        print(f"sampa {command}: error: {err}", file=sys.stderr)
        return 2


INTERRUPTED = 130  # exit status after Ctrl-C: 128 + SIGINT, as a shell reports a process it ends
#: what an interrupted command adds to its one line, where running it again continues its work
RESUME_HINTS = {"train": "run the same command again to resume after the last finished epoch"}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that knows what running it again does: ``hint`` replaces its
    :data:`RESUME_HINTS` line."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


def interrupted(command: str, hint: str | None = None) -> int:
    """After Ctrl-C (``KeyboardInterrupt``): one line on stderr instead of a traceback, status 130 (with
    ``hint``, else the command's :data:`RESUME_HINTS` line). A second SIGINT (Ctrl-C again, or a workflow
    job passing its own on) ends the process at once, instead of a traceback from the exit handlers it
    interrupts."""
    with contextlib.suppress(ValueError):  # only the main thread may set a handler
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    hint = hint or RESUME_HINTS.get(command)
    print(f"sampa {command}: interrupted (SIGINT)" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return INTERRUPTED


def first_line(err: BaseException, default: str = "") -> str:
    """The first non-blank line of ``err``'s message, stripped (``default`` when it has none)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), default)


def stdout_closed() -> int:
    """After a ``BrokenPipeError`` on stdout: point stdout at /dev/null (so flushing it at exit cannot
    fail again) and return the exit status of a process ended by SIGPIPE (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
