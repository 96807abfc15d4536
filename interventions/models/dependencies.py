"""Runtime imports, checked before a job writes anything.

pyvene 0.1.8 is installed with ``--no-deps`` (its metadata pulls ~0.6 GB of packages that
neither its intervention core nor this tool imports), so pip cannot promise it is there: a run
checks it, and every other package it will import, first, and a missing one is one line naming
the install command instead of a traceback after the clean pass.
"""

from __future__ import annotations

import contextlib
import io
import sys
from importlib import import_module

from interventions.errors import UserError
from interventions.interrupts import sigint_deferred

INSTALL = {
    "pyvene": "pip install --no-deps pyvene==0.1.8",
    "torch": "pip install torch==2.13.0 (CPU wheel; on a GPU machine install the CUDA torch you need)",
}
"""Install commands that differ from ``pip install -e .`` (the package's declared dependencies)."""

RUN = ("torch", "transformers", "pyvene", "numpy", "pandas", "pyarrow", "safetensors", "scipy", "statsmodels")
REPORT = ("matplotlib",)


def require(*modules: str) -> None:
    """Import each module; raise one :class:`UserError` line naming the install command if one fails."""
    for name in modules:
        try:
            # pyvene prints a notice on import, and swallows Ctrl-C in a bare except: hold SIGINT
            with sigint_deferred(), contextlib.redirect_stdout(io.StringIO()) as chatter:
                import_module(name)
            # stdout is for results: third-party notices go to stderr, except pyvene's advice to
            # install nnsight, a backend this tool never uses.
            notice = "\n".join(line for line in chatter.getvalue().splitlines()
                               if line.strip() and "nnsight is not detected" not in line)
            if notice:
                print(notice, file=sys.stderr)
        except ImportError as exc:
            fix = INSTALL.get(name, f"pip install -e . (or pip install {name})")
            detail = f" ({exc})" if getattr(exc, "name", name) != name else ""
            raise UserError(f"{name} is not importable{detail}; install it with: {fix}", field="dependencies") \
                from None


def require_for_run(*, report: bool = True) -> None:
    """What ``intervene run`` imports between its first check and its report."""
    require(*RUN, *(REPORT if report else ()))
