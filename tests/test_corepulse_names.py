"""CorePulse's block names select what CorePulse's own block mapper selects.

``tests/fixtures/reference/corepulse/blocks.json`` was written by
``tools/reference_corepulse.py`` running CorePulse's ``UNetBlockMapper`` and
``UNetPatcher`` on diffusers UNets of each shape: for every name it accepts, the
cross-attention modules it patches, and the names it refuses.
"""

import json
from pathlib import Path

import pytest

from pulse_plugin import tiny
from pulse_plugin.selectors import describe, resolve

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures/reference/corepulse/blocks.json").read_text()
)


@pytest.fixture(scope="module", params=sorted(REFERENCE))
def case(request, sd):
    ref = REFERENCE[request.param]
    shape = ref["tiny"]
    cfg = tiny.TinyConfig(
        channels=(32,) * len(shape["attention"]),
        attention=tuple(shape["attention"]),
        layers_per_block=shape["layers_per_block"],
        transformer_layers=tuple(shape["transformer_layers"]),
    )
    return ref, describe(tiny.build_pipeline(sd, cfg).unet)


def test_each_name_selects_corepulses_modules(case):
    ref, sites = case
    by_id = {s.block_id: s for s in sites}
    names = {s.corepulse for s in sites}
    assert names == set(ref["selected"])
    for name, modules in ref["selected"].items():
        ours = [by_id[b].diffusers + ".attn2" for b in resolve(name, sites)]
        assert sorted(ours) == sorted(modules), name


def test_names_corepulse_refuses_are_refused(case):
    ref, sites = case
    for name in ref["refused"]:
        with pytest.raises(ValueError, match="matches no attention site"):
            resolve(name, sites)
