"""Use Debian's OpenBLAS under MLX's CPU wheel, whose bundled reference BLAS is slow."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
OPT_OUT = "PULSE_NO_OPENBLAS"


def preload_command(argv: Sequence[str]) -> Optional[dict]:
    """The environment to re-run argv with OpenBLAS preloaded, or None when not needed."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT):
        return None
    if not OPENBLAS.exists() or str(OPENBLAS) in os.environ.get("LD_PRELOAD", ""):
        return None
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (str(OPENBLAS), env.get("LD_PRELOAD")) if p)
    return env


def reexec_with_openblas(module: str) -> None:
    """Re-run ``python -m module`` with OpenBLAS preloaded (before MLX is imported)."""
    env = preload_command(sys.argv)
    if env is None or "mlx.core" in sys.modules:
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
