"""Instrument this Python process at start-up, for ``infermeter exec``.

``infermeter exec`` puts this folder first on PYTHONPATH, so every Python
process it starts, and their children (they inherit the environment), runs
this file before the application. It calls ``infermeter.instrument()`` when
``$INFERMETER_AUTO_INSTRUMENT`` is "1" (set ``0`` to opt a subtree out), then
runs the ``sitecustomize`` this one hides, if the rest of sys.path has one
(a distribution's, a virtualenv's, the user's), so nothing changes for the
application. Nothing here may raise: a failure is silent unless
``$INFERMETER_DEBUG`` is set, and the application starts as it would have.

``python -E``, ``-I`` and ``-S`` ignore PYTHONPATH or skip site: such
processes are not instrumented.
"""

from __future__ import annotations

import os
import sys


def _debug(what: str) -> None:
    if os.environ.get("INFERMETER_DEBUG"):
        import traceback

        print(f"infermeter sitecustomize: {what}", file=sys.stderr)
        traceback.print_exc()


def _instrument() -> None:
    if os.environ.get("INFERMETER_AUTO_INSTRUMENT") != "1":
        return
    try:
        import infermeter

        infermeter.instrument()
    except Exception:  # not installed for this interpreter, or a bug: the app runs anyway
        _debug("instrument() failed")


def _chain() -> None:
    """Run the sitecustomize that this one shadows, under the same module name."""
    try:
        from importlib.machinery import PathFinder
        from importlib.util import module_from_spec

        here = os.path.dirname(os.path.abspath(__file__))
        rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        spec = PathFinder.find_spec("sitecustomize", rest)
        if spec is None or spec.loader is None:
            return
        if spec.origin and os.path.abspath(spec.origin) == os.path.abspath(__file__):
            return
        module = module_from_spec(spec)
        sys.modules["sitecustomize"] = module  # `import sitecustomize` finds the real one
        spec.loader.exec_module(module)
    except Exception:
        _debug("the chained sitecustomize failed")


_instrument()
_chain()
