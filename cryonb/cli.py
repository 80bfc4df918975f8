"""``python -m cryonb <command>``: the steps a user runs outside notebooks.

Each command is a module in :mod:`cryonb.commands` with a docstring (its ``--help``),
``add_args(parser)`` and ``main(args) -> int``; modules are discovered, so adding a
command is adding a file. ``export_mrc.py`` becomes ``export-mrc``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import cryonb.commands
from cryonb.budget import PartDone
from cryonb.errors import CryoNBError

#: exit status when a time budget (--max-minutes) ended the call with progress saved
PART_DONE_EXIT = 3

__all__ = ["main", "build_parser"]


def _command_modules() -> dict[str, object]:
    found = {}
    for info in sorted(pkgutil.iter_modules(cryonb.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        found[info.name.replace("_", "-")] = importlib.import_module(f"cryonb.commands.{info.name}")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cryonb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _command_modules().items():
        doc = (module.__doc__ or name).strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(p)  # type: ignore[attr-defined]
        # RESUMABLE = False in a command module: an interrupted call starts over, so do not promise a resume
        p.set_defaults(_main=module.main, _resumable=getattr(module, "RESUMABLE", True))  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except PartDone as exc:
        print(f"cryonb {args.command}: part done: {exc}", file=sys.stderr)
        return PART_DONE_EXIT
    except CryoNBError as exc:
        print(f"cryonb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a file system refusal (read-only folder, a file where a folder is needed, disk full) is the
        # user's to fix: name the path, no traceback. Other exceptions are bugs and keep theirs.
        where = exc.filename if exc.filename is not None else "?"
        print(f"cryonb {args.command}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args._resumable:
            note = "finished outputs are kept, run again to resume"
        else:
            note = "nothing was changed (outputs are replaced only when complete); run again to start over"
        print(f"cryonb {args.command}: interrupted; {note}", file=sys.stderr)
        return 130
