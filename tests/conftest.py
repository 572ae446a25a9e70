"""Shared fixtures: upstream (plain and patched, side by side) and tiny pipelines."""

import pytest

from pulse_plugin import tiny, upstream


@pytest.fixture(scope="session")
def plain_sd():
    """Upstream's stable_diffusion package, unpatched."""
    return upstream.load(patched=False)


@pytest.fixture(scope="session")
def sd():
    """Upstream's stable_diffusion package with this project's patch series."""
    return upstream.load(patched=True)


@pytest.fixture
def tiny_pipe(sd):
    return tiny.build_pipeline(sd, tiny.TinyConfig())


@pytest.fixture
def tiny_xl(sd):
    return tiny.build_pipeline(sd, tiny.TinyConfig(sdxl=True))
