"""Record which attention modules CorePulse's own block mapper selects for each block name.

Run with torch and diffusers installed and a checkout of DataCTE/CorePulse (never in CI):

    python tools/reference_corepulse.py --corepulse PATH/TO/CorePulse

For a few UNet shapes (SD 1.x/2.x, SDXL, the bundled toy model's), it builds a
diffusers ``UNet2DConditionModel``, asks CorePulse's ``UNetBlockMapper`` for its
block names and ``UNetPatcher`` for the cross-attention modules each name patches,
tries every name it refuses, and writes
``tests/fixtures/reference/corepulse/blocks.json``, which
``tests/test_corepulse_names.py`` compares with this project's selectors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/reference/corepulse"

# Shapes in this project's TinyConfig terms (per resolution level, highest first);
# only the block layout matters for the names, so the widths are tiny.
CASES = {
    "sd15": dict(
        attention=[True, True, True, False],
        layers_per_block=2,
        transformer_layers=[1, 1, 1, 1],
    ),
    "sdxl": dict(
        attention=[False, True, True], layers_per_block=2, transformer_layers=[1, 2, 3]
    ),
    "toy": dict(attention=[True, True], layers_per_block=1, transformer_layers=[1, 1]),
}


def _import_corepulse(root: Path):
    """CorePulse's unet_patcher without its package __init__ (which needs torchvision)."""
    for name in ("core_pulse", "core_pulse.models", "core_pulse.utils"):
        package = types.ModuleType(name)
        package.__path__ = [str(root / name.replace(".", "/"))]
        sys.modules[name] = package
    base = importlib.import_module("core_pulse.models.base")
    patcher = importlib.import_module("core_pulse.models.unet_patcher")
    return base.BlockIdentifier, patcher.UNetBlockMapper, patcher.UNetPatcher


def _unet(case: dict):
    from diffusers import UNet2DConditionModel

    levels = len(case["attention"])
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in case["attention"]]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in case["attention"]][::-1]
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=[8] * levels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=case["layers_per_block"],
        transformer_layers_per_block=case["transformer_layers"],
        norm_num_groups=8,
        cross_attention_dim=8,
        attention_head_dim=2,
    )


def record(root: Path) -> dict:
    from diffusers import EulerDiscreteScheduler

    BlockIdentifier, UNetBlockMapper, UNetPatcher = _import_corepulse(root)
    out = {}
    for name, case in CASES.items():
        unet = _unet(case)
        mapper = UNetBlockMapper(unet)
        patcher = UNetPatcher(unet, EulerDiscreteScheduler())
        selected = {}
        for block in mapper.get_all_block_identifiers():
            path = mapper.map_to_diffusers_path(BlockIdentifier.from_string(block))
            modules = patcher._find_cross_attention_modules(unet, path)
            selected[block] = [p for p, _ in modules]
        levels = len(case["attention"])
        tried = [f"input:{i}" for i in range(levels + 2)]
        tried += [f"output:{i}" for i in range(levels + 2)] + ["middle:0"]
        refused = [
            b
            for b in tried
            if not mapper.is_valid_block(BlockIdentifier.from_string(b))
        ]
        out[name] = {"tiny": case, "selected": selected, "refused": refused}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corepulse", type=Path, required=True, help="CorePulse checkout"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "blocks.json"
    path.write_text(json.dumps(record(args.corepulse), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
