"""Re-running with Debian's OpenBLAS preloaded: when, with what environment, and under pytest."""

import os
import subprocess
import sys
import textwrap

import pytest

from pulse_plugin import blas


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    return lib


def test_preload_env_adds_the_library_and_the_guard(library):
    env = blas.preload_env({"PATH": "/bin"}, "linux", library)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(library), blas.GUARD: "1"}


def test_preload_env_keeps_an_existing_preload(library):
    env = blas.preload_env({"LD_PRELOAD": "/x/libfoo.so"}, "linux", library)
    assert env["LD_PRELOAD"] == f"{library}:/x/libfoo.so"


@pytest.mark.parametrize(
    "environ, platform",
    [
        ({blas.OPT_OUT: "1"}, "linux"),
        ({blas.GUARD: "1"}, "linux"),
        ({}, "darwin"),
    ],
)
def test_preload_env_not_needed(library, environ, platform):
    assert blas.preload_env(environ, platform, library) is None


def test_preload_env_not_needed_when_preloaded_or_missing(library, tmp_path):
    assert (
        blas.preload_env({"LD_PRELOAD": f"/a.so:{library}"}, "linux", library) is None
    )
    assert blas.preload_env({}, "linux", tmp_path / "absent.so") is None


@pytest.mark.parametrize(
    "argv0, expected",
    [
        ("/v/bin/pytest", True),
        ("/v/lib/python3.11/site-packages/pytest/__main__.py", True),
        ("/v/bin/pulse", False),
        ("myscript.py", False),
    ],
)
def test_started_as_pytest(argv0, expected):
    assert blas.started_as_pytest(argv0) is expected


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not blas.OPENBLAS.exists(),
    reason="needs Debian's OpenBLAS on Linux",
)
def test_pytest_reruns_itself_preloaded_with_its_output(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "from pulse_plugin import blas\n\n"
        "def pytest_configure(config):\n"
        "    blas.reexec_pytest(config)\n"
    )
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import os

            def test_preloaded():
                assert os.environ["{blas.GUARD}"] == "1"
                assert "libopenblas" in open("/proc/self/maps").read()
            """
        )
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_PRELOAD", blas.GUARD, blas.OPT_OUT)
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
