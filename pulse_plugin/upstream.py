"""Materialise upstream's stable_diffusion package, patch it and import it.

Upstream is ml-explore/mlx-examples at 042280ce. Without a checkout, its files
come from the PyPI wheel ``diffuse-mlx==0.1.2``, verified file by file against
upstream's git blob hashes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

from . import patchset

UPSTREAM_COMMIT = "042280ce50645b69d9c322ccf1cb8471384007f1"
WHEEL = "diffuse-mlx==0.1.2"
PACKAGE = "stable_diffusion/stable_diffusion"
UPSTREAM_BLOBS: Dict[str, str] = {
    "stable_diffusion/stable_diffusion/__init__.py": "cc9dd9a8997d1d3f5af4410418b42bbd7682d131",
    "stable_diffusion/stable_diffusion/clip.py": "b5e11fded952382f7238e3c979ac7d51e3dc9201",
    "stable_diffusion/stable_diffusion/config.py": "6715757af0471e553f69fb9cb94f9972d01f7874",
    "stable_diffusion/stable_diffusion/model_io.py": "2c2227db8cdf600e4347ced376211fa6fcb00ad1",
    "stable_diffusion/stable_diffusion/sampler.py": "ff4433d00c2cc37019f59d548e46d8d998c04174",
    "stable_diffusion/stable_diffusion/tokenizer.py": "ae9b967a1dbc1911d90a75178ba9603e1c6aee17",
    "stable_diffusion/stable_diffusion/unet.py": "cfad7fccfa7ebd7acc95307096cdc66ffee555c4",
    "stable_diffusion/stable_diffusion/vae.py": "5fd47f1352371afad046e7a70ca9f6bc77320189",
    "stable_diffusion/txt2image.py": "26c757f8358a72ca9a3f8d5f16a806158a1470ff",
    "stable_diffusion/image2image.py": "4444c48800b6f2719c4941e0f7491acf2c56d975",
    "stable_diffusion/requirements.txt": "d02baf7a608534ad0b9b5443886244e11837b408",
}
PACKAGE_FILES = [p for p in UPSTREAM_BLOBS if p.startswith(PACKAGE + "/")]


class UpstreamError(Exception):
    """Upstream's files could not be found, fetched or verified."""


@dataclass
class FetchReport:
    root: Path
    source: str
    verified: List[str]
    not_upstream: List[str]  # present, but not byte-identical to upstream 042280ce
    missing: List[str]  # upstream files the source does not carry


def git_blob_hash(data: bytes) -> str:
    """The hash ``git hash-object`` gives for these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("PULSE_CACHE") or Path.home() / ".cache" / "pulse-plugin"
    return Path(base)


def _download_wheel() -> Path:
    wheels = cache_dir() / "wheels"
    name = WHEEL.replace("-", "_").replace("==", "-")
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        WHEEL,
        "-d",
        str(wheels),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not found:
        raise UpstreamError(
            f"could not download {WHEEL} from the package registry:\n{result.stderr.strip()}"
        )
    return found[0]


def _files_from_wheel() -> Dict[str, bytes]:
    wheel = _download_wheel()
    files = {}
    with zipfile.ZipFile(wheel) as zf:
        for rel in PACKAGE_FILES:
            member = "diffuse_mlx/stable_diffusion/" + Path(rel).name
            try:
                files[rel] = zf.read(member)
            except KeyError:
                continue
    return files


def _files_from_checkout(checkout: Path) -> Dict[str, bytes]:
    checkout = Path(checkout)
    if not (checkout / PACKAGE / "unet.py").is_file():
        raise UpstreamError(
            f"{checkout} is not an mlx-examples checkout: {PACKAGE}/unet.py is missing"
        )
    wanted = list(UPSTREAM_BLOBS) + patchset.new_files(patchset.load_series())
    return {
        rel: (checkout / rel).read_bytes()
        for rel in wanted
        if (checkout / rel).is_file()
    }


def fetch_upstream(dest: Path, checkout: Optional[Path] = None) -> FetchReport:
    """Write upstream's stable_diffusion folder under dest, laid out like a checkout root."""
    dest = Path(dest)
    if (dest / "stable_diffusion").exists():
        raise UpstreamError(
            f"{dest / 'stable_diffusion'} already exists; choose an empty folder"
        )
    files = _files_from_checkout(checkout) if checkout else _files_from_wheel()
    source = f"checkout {checkout}" if checkout else f"wheel {WHEEL}"
    verified = [
        rel
        for rel, data in files.items()
        if git_blob_hash(data) == UPSTREAM_BLOBS.get(rel)
    ]
    not_upstream = sorted(set(files) - set(verified))
    missing = sorted(set(PACKAGE_FILES) - set(files))
    if missing:
        raise UpstreamError(f"{source} lacks upstream files: {', '.join(missing)}")
    for rel, data in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    missing_extra = sorted(set(UPSTREAM_BLOBS) - set(files))
    return FetchReport(dest, source, sorted(verified), not_upstream, missing_extra)


def describe(report: FetchReport) -> str:
    """A plain account of what was fetched and what is not upstream's."""
    lines = [f"upstream stable_diffusion from {report.source} -> {report.root}"]
    lines.append(
        f"  {len(report.verified)} files identical to upstream {UPSTREAM_COMMIT[:8]}"
    )
    for rel in report.not_upstream:
        lines.append(f"  NOT upstream's file (content differs): {rel}")
    for rel in report.missing:
        lines.append(f"  not carried by this source: {rel}")
    return "\n".join(lines)


def checkout_from_env() -> Optional[Path]:
    """The mlx-examples checkout named by $PULSE_UPSTREAM_CHECKOUT, if any."""
    checkout = os.environ.get("PULSE_UPSTREAM_CHECKOUT")
    return Path(checkout) if checkout else None


def fetch_pristine(dest: Path) -> FetchReport:
    """Upstream under dest ($PULSE_UPSTREAM_CHECKOUT or the wheel) with the series reverted."""
    report = fetch_upstream(dest, checkout_from_env())
    patchset.revert_series(dest, patchset.load_series())
    return report


def _series_key(series_dir: Path = patchset.SERIES_DIR) -> str:
    digest = hashlib.sha1()
    for path in patchset.series_files(series_dir):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def prepared_tree(patched: bool = True) -> Path:
    """A cached upstream tree, patched or plain, made once and atomically.

    Upstream comes from the checkout named by $PULSE_UPSTREAM_CHECKOUT when set,
    else from the registry wheel. The plain tree has the series reverted, so a
    patched checkout serves too.
    """
    checkout = checkout_from_env()
    source = (
        hashlib.sha1(str(checkout).encode()).hexdigest()[:8] if checkout else "wheel"
    )
    state = "patched-" + _series_key() if patched else "plain-" + _series_key()
    name = f"upstream-{source}-{state}"
    final = cache_dir() / name
    if (final / PACKAGE / "unet.py").is_file():
        return final
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=cache_dir()))
    try:
        fetch_pristine(tmp)
        if patched:
            patchset.apply_series(tmp, patchset.load_series())
        try:
            os.replace(tmp, final)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def import_package(root: Path, name: str) -> ModuleType:
    """Import root's stable_diffusion package under the module name ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    pkg = Path(root) / PACKAGE
    spec = importlib.util.spec_from_file_location(
        name, pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(patched: bool = True) -> ModuleType:
    """Upstream's stable_diffusion package, patched by this project's series or plain.

    The two are distinct modules (``pulse_upstream_patched`` and
    ``pulse_upstream_plain``) and can be used side by side.
    """
    name = "pulse_upstream_patched" if patched else "pulse_upstream_plain"
    if name in sys.modules:
        return sys.modules[name]
    return import_package(prepared_tree(patched), name)
