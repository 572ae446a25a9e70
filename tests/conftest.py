"""Shared fixtures: upstream (plain and patched, side by side) and tiny pipelines."""

import pytest

from pulse_plugin import blas, tiny, upstream


def pytest_configure(config):
    """Re-run the suite with Debian's OpenBLAS preloaded when it is installed (see blas.py)."""
    blas.reexec_pytest(config)


@pytest.fixture(scope="session")
def plain_sd():
    """Upstream's stable_diffusion package, unpatched."""
    return upstream.load(patched=False)


@pytest.fixture(scope="session")
def sd():
    """Upstream's stable_diffusion package with this project's patch series."""
    return upstream.load(patched=True)


@pytest.fixture
def plain_pipe(plain_sd):
    """A tiny SD pipeline on unpatched upstream (LoRA needs no hooks)."""
    return tiny.build_pipeline(plain_sd, tiny.TinyConfig())


@pytest.fixture
def tiny_pipe(sd):
    return tiny.build_pipeline(sd, tiny.TinyConfig())


@pytest.fixture
def tiny_xl(sd):
    return tiny.build_pipeline(sd, tiny.TinyConfig(sdxl=True))


@pytest.fixture(scope="module")
def pipe(sd):
    """The technique tests' SD-shaped tiny pipeline (three levels, attention at each)."""
    from test_pulse_support import SD_CFG

    return tiny.build_pipeline(sd, SD_CFG)


@pytest.fixture(scope="module")
def xl(sd):
    """The technique tests' SDXL-shaped tiny pipeline (no attention at the top level)."""
    from test_pulse_support import XL_CFG

    return tiny.build_pipeline(sd, XL_CFG)
