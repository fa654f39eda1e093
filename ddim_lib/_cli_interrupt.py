"""Ctrl-C while the ``ddim`` command is still importing torch: one line and exit status 130.

``ddim_lib/__init__.py`` imports torch before ``ddim_lib.cli.main`` can catch anything, so a
KeyboardInterrupt during that import would print a long traceback. ``install()`` runs first thing in
``ddim_lib/__init__.py`` and, only when the process is the ``ddim`` command (``ddim`` or
``python -m ddim_lib.cli``), sets a ``sys.excepthook`` that turns an uncaught KeyboardInterrupt
into ``ddim: interrupted`` and exit status 130. Library users keep Python's default behaviour.
"""
from __future__ import annotations

import os
import sys


def _is_cli() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) in ("ddim", "ddim.exe") or argv0 == "-m"


def install() -> None:
    """Install the hook when this process is the ``ddim`` command (nothing otherwise)."""
    if not _is_cli() or getattr(sys.excepthook, "_ddim", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            sys.stderr.write("ddim: interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        previous(kind, value, tb)

    hook._ddim = True
    sys.excepthook = hook
