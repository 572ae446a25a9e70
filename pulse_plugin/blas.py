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


# OpenBLAS kernels that Debian's build can be forced to use; their float32
# results differ in the low bits (tests' thresholds must hold under each).
KERNELS = ("Haswell", "Sandybridge", "Nehalem", "Prescott", "SkylakeX")
DEFAULT = "default"  # OpenBLAS preloaded, its own choice of kernel
BUNDLED = "bundled"  # MLX's bundled BLAS: nothing preloaded


def kernel_env(kernel: str, base: Optional[dict] = None) -> dict:
    """The environment that runs MLX under kernel (DEFAULT, BUNDLED or one of KERNELS)."""
    if kernel not in (DEFAULT, BUNDLED) + KERNELS:
        raise ValueError(
            f"kernel: expected {DEFAULT!r}, {BUNDLED!r} or one of {KERNELS}, got {kernel!r}"
        )
    env = dict(os.environ if base is None else base)
    env.pop("OPENBLAS_CORETYPE", None)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    preload = [p for p in preload if Path(p).name != OPENBLAS.name]
    if kernel != BUNDLED:
        preload.insert(0, str(OPENBLAS))
        env.pop(OPT_OUT, None)
    else:
        env[OPT_OUT] = "1"
    if kernel in KERNELS:
        env["OPENBLAS_CORETYPE"] = kernel
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def fingerprint() -> str:
    """The low bits of one seeded float32 matmul: differs between BLAS kernels."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a = mx.array(rng.standard_normal((96, 200)).astype(np.float32))
    b = mx.array(rng.standard_normal((200, 64)).astype(np.float32))
    return f"{float(np.array(a @ b, np.float64).sum()):.10e}"
