"""Block selectors: exact ids, parts, resolution levels and CorePulse's names.

Upstream's attention sites are named ``part.block.attention.layer``
(``down.1.0.0``, ``mid.0.0``, ``up.0.2.1``); ``up`` blocks are numbered in
execution order, so ``up.0`` is the lowest resolution, as diffusers numbers
``up_blocks``. CorePulse's names (``input:N``, ``middle:0``, ``output:N``)
are diffusers' block indices, as CorePulse's own block mapper reads them:
``input:N`` is ``down_blocks[N]``, ``output:N`` is ``up_blocks[N]``, each with
every attention and transformer layer in it. The original LDM/SGM numbering
(``input_blocks.N``, ``middle_block``, ``output_blocks.N``: conv_in, every
resnet and every downsampler counted), which ComfyUI and kohya's SGM LoRA
names use, selects one spatial transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Union

Selector = Union[str, Sequence[str]]
PARTS = ("down", "mid", "up")
LEVEL_NAMES = ("structure", "mid-level", "detail")


@dataclass(frozen=True)
class Site:
    """One attention site of a UNet and the names that select it."""

    block_id: str
    part: str
    block: int
    attention: int
    layer: int
    level: int  # 0 = highest resolution (the latent's own size)
    corepulse: str  # input:N / middle:0 / output:N (diffusers' block index)
    ldm: str  # input_blocks.N / middle_block / output_blocks.N

    @property
    def diffusers(self) -> str:
        """The diffusers module path of this site's transformer block."""
        block = (
            "mid_block" if self.part == "mid" else f"{self.part}_blocks.{self.block}"
        )
        return f"{block}.attentions.{self.attention}.transformer_blocks.{self.layer}"


def _parse(block_id: str):
    bits = block_id.split(".")
    if bits[0] == "mid":
        return "mid", 0, 0, int(bits[2])
    return bits[0], int(bits[1]), int(bits[2]), int(bits[3])


def describe(unet) -> List[Site]:
    """The UNet's attention sites in execution order, with level, CorePulse and LDM names."""
    hooks = getattr(unet, "hooks", None)
    if hooks is None:
        raise ValueError("unet: expected a patched upstream UNetModel with .hooks")
    n = len(unet.down_blocks)
    input_start = []  # LDM input_blocks index of each down block's first resnet
    i = 1
    for block in unet.down_blocks:
        input_start.append(i)
        i += len(block.resnets) + (1 if "downsample" in block else 0)
    output_start = []
    i = 0
    for block in unet.up_blocks:
        output_start.append(i)
        i += len(block.resnets)
    sites = []
    for block_id in hooks.sites:
        part, b, a, layer = _parse(block_id)
        if part == "down":
            level, name, ldm = b, f"input:{b}", f"input_blocks.{input_start[b] + a}"
        elif part == "up":
            level, name = n - 1 - b, f"output:{b}"
            ldm = f"output_blocks.{output_start[b] + a}"
        else:
            level, name, ldm = n - 1, "middle:0", "middle_block"
        sites.append(Site(block_id, part, b, a, layer, level, name, ldm))
    return sites


def list_blocks(pipe_or_unet) -> List[str]:
    """Upstream's attention site ids in execution order."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    return [s.block_id for s in describe(unet)]


def names(sites: Sequence[Site]) -> List[str]:
    """Every name a selector may use on these sites."""
    out: List[str] = ["all", *PARTS, *LEVEL_NAMES]
    out += sorted({f"level:{s.level}" for s in sites})
    out += sorted({f"{s.part}.{s.block}" for s in sites if s.part != "mid"})
    out += sorted(
        {f"{s.part}.{s.block}.{s.attention}" for s in sites if s.part != "mid"}
    )
    out += list(dict.fromkeys(s.corepulse for s in sites))
    out += list(dict.fromkeys(s.ldm for s in sites))
    out += [s.block_id for s in sites]
    return list(dict.fromkeys(out))


def _levels(sites: Sequence[Site]) -> Dict[str, List[int]]:
    levels = sorted({s.level for s in sites})
    return {
        "detail": levels[:1],
        "structure": levels[-1:],
        "mid-level": levels[1:-1],
    }


def _one(name: str, sites: Sequence[Site]) -> List[str]:
    key = name.strip().lower()
    if key == "all":
        return [s.block_id for s in sites]
    if key in PARTS:
        return [s.block_id for s in sites if s.part == key]
    if key in LEVEL_NAMES:
        levels = _levels(sites)[key]
        if not levels:
            found = sorted({s.level for s in sites})
            raise ValueError(
                f"block {name!r}: this model has attention at only {len(found)} "
                f"resolution levels {found}; use 'structure', 'detail' or 'level:N'"
            )
        return [s.block_id for s in sites if s.level in levels]
    if key.startswith("level:"):
        return [s.block_id for s in sites if f"level:{s.level}" == key]
    if ":" in key:
        return [s.block_id for s in sites if s.corepulse == key]
    if key.startswith(("input_blocks.", "output_blocks.")) or key == "middle_block":
        return [s.block_id for s in sites if s.ldm == key]
    return [
        s.block_id
        for s in sites
        if s.block_id == key or s.block_id.startswith(key + ".")
    ]


def resolve(selector: Selector, sites: Sequence[Site]) -> List[str]:
    """Block ids (execution order) selected by a name or list of names; ValueError if unknown."""
    items = [selector] if isinstance(selector, str) else list(selector)
    if not items:
        raise ValueError("block: expected a selector name or a non-empty list of them")
    chosen = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"block: expected str selectors, got {item!r}")
        found = _one(item, sites)
        if not found:
            raise ValueError(
                f"block {item!r} matches no attention site; valid names: {names(sites)}"
            )
        chosen.update(found)
    return [s.block_id for s in sites if s.block_id in chosen]


def table(sites: Iterable[Site]) -> str:
    """A Markdown table: CorePulse name -> LDM names, upstream ids and level."""
    rows: Dict[str, List[Site]] = {}
    for s in sites:
        rows.setdefault(s.corepulse, []).append(s)
    lines = [
        "| CorePulse | LDM / SGM | upstream block ids | level |",
        "|---|---|---|---|",
    ]
    for name, group in rows.items():
        ldm = ", ".join(f"`{n}`" for n in dict.fromkeys(s.ldm for s in group))
        ids = ", ".join(f"`{s.block_id}`" for s in group)
        lines.append(f"| `{name}` | {ldm} | {ids} | {group[0].level} |")
    return "\n".join(lines)


def selector_table(sites: Sequence[Site]) -> str:
    """A Markdown table: every other selector name (parts, levels, prefixes) -> its ids."""
    own = {s.block_id for s in sites} | {s.corepulse for s in sites}
    lines = ["| selector | upstream block ids |", "|---|---|"]
    for name in names(sites):
        if name in own:
            continue
        try:
            ids = ", ".join(f"`{b}`" for b in resolve(name, sites))
        except ValueError:  # mid-level on a model with two levels
            levels = sorted({s.level for s in sites})
            ids = f"none: attention at only {len(levels)} levels here; use `level:N`"
        lines.append(f"| `{name}` | {ids} |")
    return "\n".join(lines)
