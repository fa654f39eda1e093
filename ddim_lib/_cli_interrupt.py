"""Ctrl-C while the ``ddim`` command is still importing torch: one line and exit status 130.

``ddim_lib/__init__.py`` imports torch before ``ddim_lib.cli.main`` can catch anything, so a
KeyboardInterrupt during that import would print a long traceback. ``install()`` runs first thing in
``ddim_lib/__init__.py`` and, only when the process is the ``ddim`` command (``ddim`` or
``python -m ddim_lib.cli``), sets a ``sys.excepthook`` that turns an uncaught KeyboardInterrupt
into ``ddim: interrupted`` and exit status 130. Library users keep Python's default behaviour.

A Ctrl-C that lands inside an extension module's initialisation can surface as another error (numpy
then says "cannot load module more than once per process" when torch imports it again), so the
SIGINT handler also records that an interrupt came, and any error after it is reported as the interrupt.
"""
from __future__ import annotations

import os
import signal
import sys

_interrupted = False


def interrupted() -> bool:
    """Whether a Ctrl-C (SIGINT) reached this process since ``install()``."""
    return _interrupted


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _is_cli() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) in ("ddim", "ddim.exe") or argv0 == "-m"


def install() -> None:
    """Install the hook when this process is the ``ddim`` command (nothing otherwise)."""
    if not _is_cli() or getattr(sys.excepthook, "_ddim", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt) or _interrupted:
            sys.stderr.write("ddim: interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        previous(kind, value, tb)

    hook._ddim = True
    sys.excepthook = hook
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:            # not the main thread: leave signals alone
        pass
