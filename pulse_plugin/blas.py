"""Use Debian's OpenBLAS under MLX's CPU wheel, whose bundled reference BLAS is slow.

The ``pulse`` command and the test suite re-run themselves once with the library
preloaded (``LD_PRELOAD``) when it is installed; ``PULSE_NO_OPENBLAS=1`` opts out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
OPT_OUT = "PULSE_NO_OPENBLAS"
GUARD = "PULSE_OPENBLAS_REEXEC"  # set in the re-run process: never re-run twice


def preload_env(
    environ: Mapping[str, str],
    platform: str = sys.platform,
    library: Path = OPENBLAS,
) -> Optional[dict]:
    """The environment to re-run a process with ``library`` preloaded, or None when not needed."""
    if not platform.startswith("linux") or environ.get(OPT_OUT) or environ.get(GUARD):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if not library.exists() or str(library) in preloaded.split(":"):
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(p for p in (str(library), preloaded) if p)
    env[GUARD] = "1"
    return env


def reexec_with_openblas(module: str) -> None:
    """Re-run ``python -m module`` with OpenBLAS preloaded (before MLX is imported)."""
    env = preload_env(os.environ)
    if env is None or "mlx.core" in sys.modules:
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def started_as_pytest(argv0: str) -> bool:
    """Whether the process is pytest itself (``pytest`` or ``python -m pytest``)."""
    path = Path(argv0)
    return path.name in ("pytest", "py.test") or path.parent.name == "pytest"


def reexec_pytest(config) -> None:
    """Re-run this pytest process, exactly as it was started, with OpenBLAS preloaded.

    Called from ``pytest_configure``: pytest's output capture is stopped first so
    that the new process writes to the real stdout and stderr.
    """
    env = preload_env(os.environ)
    if env is None or not started_as_pytest(sys.argv[0]):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
