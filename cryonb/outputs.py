"""Output folders of the commands: guarded against clobbering, written as one unit.

Public surface: :func:`output_folder`, :func:`check_output_folder`, :data:`MARKER`.

``extract -o OUT``, ``classify -o OUT`` and ``oneshot -o OUT`` write a folder. The rules:

- OUT must be absent, empty, or ours: it holds :data:`MARKER` naming the same command. Anything
  else needs ``overwrite=True`` (``--overwrite``), which replaces only the entries the command
  writes; other files in OUT are always kept.
- OUT may never contain an input of the command (``-o OUT`` with ``OUT/meta.csv`` as coordinates),
  nor be a generated data set (``recipe.json``), with or without ``overwrite``.
- The whole output is built in a temporary sibling ``.cryonb-tmp-<pid>-<host>-<token>-<OUT name>/``
  and swapped in when complete (``renameat2(RENAME_EXCHANGE)`` where the system has it), so an
  interrupted run leaves OUT as it was and stale files of an earlier run (``mrc/``, ``masks/``) never
  remain beside new ones. A temporary left by a killed run is removed by the next run once the
  process that made it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cryonb.errors import CryoNBError

__all__ = ["MARKER", "output_folder", "check_output_folder"]

#: file in every output folder we wrote, naming the command
MARKER = ".cryonb-output.json"
_TMP_PREFIX = ".cryonb-tmp-"
#: a temporary made on another host cannot be checked for a live process: removed after this age
_FOREIGN_TMP_MAX_AGE_S = 24 * 3600


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _marker_command(folder: Path) -> str | None:
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("command") if isinstance(info, dict) else None


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(
    out: Path,
    command: str,
    produces: Iterable[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> None:
    """Raise :class:`CryoNBError` unless ``command`` may write the folder ``out`` (see the module notes).

    produces: the entry names the command writes into ``out``. recognise: test for an output of
    ``command`` written before markers existed (default: a folder holding only ``produces``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CryoNBError(f"{out}: is a file, not a folder; expected an output folder (-o)")
    real_out = out.resolve()
    for item in inputs:
        if _is_inside(Path(item).resolve(), real_out):
            raise CryoNBError(
                f"{out}: contains the input {item}; the output would replace it. Choose another output folder (-o)"
            )
    if not out.is_dir():
        return
    if (out / "recipe.json").is_file() or out.name.endswith(".partial"):
        raise CryoNBError(f"{out}: is a generated data set (recipe.json); choose another output folder (-o)")
    entries = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    if not entries or overwrite:
        return
    owner = _marker_command(out)
    if owner is None:  # written before output folders carried a marker?
        unmarked_ours = recognise(out) if recognise is not None else set(entries) <= set(produces)
        if unmarked_ours:
            return
    if owner == command:
        return
    whose = f"written by `cryonb {owner}`" if owner else f"not written by `cryonb {command}` (no {MARKER})"
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise CryoNBError(
        f"{out}: folder is not empty ({shown}) and {whose}; choose a new or empty folder, or pass --overwrite "
        f"to replace {', '.join(sorted(produces))} there (other files are kept)"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_stale(tmp: Path) -> bool:
    """True for a temporary whose process is gone (same host) or that is a day old (another host)."""
    try:
        pid_text, host, _token, _name = tmp.name[len(_TMP_PREFIX):].split("-", 3)
        pid = int(pid_text)
    except ValueError:
        return False  # not one of ours after all
    if host == _host_tag():
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - tmp.stat().st_mtime > _FOREIGN_TMP_MAX_AGE_S
    except OSError:
        return False


def _remove_if_ours(tmp: Path, out: Path, produces: set[str]) -> None:
    """Delete the temporary ``tmp`` unless it holds files we did not write (then name it and keep it)."""
    foreign = [p.name for p in tmp.iterdir() if p.name not in produces | {MARKER} and not p.name.startswith(".tmp-")]
    if foreign:
        print(f"cryonb: {tmp} is left from an interrupted run and holds {', '.join(sorted(foreign))}, which it did not "
              f"write; move them back to {out} and delete the folder", file=sys.stderr)
        return
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(out: Path, produces: set[str]) -> None:
    """Delete temporaries of ``out`` left by killed runs (their process is gone); never another run's."""
    for tmp in out.parent.glob(f"{_TMP_PREFIX}*-{out.name}"):
        if tmp.is_dir() and not tmp.is_symlink() and _is_stale(tmp):
            _remove_if_ours(tmp, out, produces)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or file system without exchange: the caller falls back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, out: Path, produces: set[str]) -> Path:
    """Put the finished ``tmp`` at ``out``; entries of the old ``out`` that we do not write move across.

    Returns the path now holding the previous output (to delete), or ``tmp`` itself if there was none.
    """
    if not out.exists():
        os.rename(tmp, out)
        return tmp
    moved = []
    try:
        for entry in out.iterdir():
            if entry.name not in produces | {MARKER} and not entry.name.startswith(".tmp-"):
                os.rename(entry, tmp / entry.name)  # the user's own files stay in the folder
                moved.append(entry.name)
        if _exchange(tmp, out):
            return tmp
        old = out.parent / f"{_TMP_PREFIX}{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}-{out.name}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        return old
    except BaseException:
        for name in moved:  # put the user's files back before the caller deletes the temporary
            if (tmp / name).exists() and not (out / name).exists():
                os.rename(tmp / name, out / name)
        raise


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike[str],
    command: str,
    produces: Iterable[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Yield an empty temporary folder to write the output of ``command`` into; it becomes ``out`` on success.

    Checks ``out`` first (:func:`check_output_folder`), removes temporaries of ``out`` left by killed
    runs, and on any exception (Ctrl-C included) deletes the temporary and leaves ``out`` as it was.
    """
    shown = Path(out)
    target = Path(os.path.abspath(shown))  # normalised: "-o ." and "-o a/.." have a real name
    if target.is_symlink():
        target = target.resolve()  # write where the link points; the link itself stays
    wanted = set(produces)
    check_output_folder(shown, command, wanted, inputs, overwrite, recognise)
    if target == target.parent or _is_inside(Path.cwd().resolve(), target.resolve()):
        raise CryoNBError(f"{shown}: is the current folder or one above it; choose a sub-folder as output (-o)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target, wanted)
        tmp = target.parent / f"{_TMP_PREFIX}{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}-{target.name}"
        tmp.mkdir()
    except OSError as exc:
        raise CryoNBError(f"{shown}: cannot create the output folder there ({exc.strerror or exc})") from exc
    try:
        yield tmp
        written = sorted(p.name for p in tmp.iterdir())
        info = {"command": command, "entries": written, "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        previous = _commit(tmp, target, wanted)
    except BaseException:
        if tmp.exists():
            _remove_if_ours(tmp, target, wanted)
        raise
    if previous.exists():
        _remove_if_ours(previous, target, wanted)
