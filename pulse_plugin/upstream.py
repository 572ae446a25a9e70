"""Materialise upstream's stable_diffusion package, patch it and import it.

Upstream is ml-explore/mlx-examples at 042280ce. Without a checkout, its files
come from the PyPI wheel ``diffuse-mlx==0.1.2``, verified file by file against
upstream's git blob hashes; any other content is refused (the wheel's
model_io.py, a documented variant, aside), unless a user explicitly accepts
their own modified checkout, which is then said every time it is used.
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
from typing import Dict, List, Optional, Tuple

from . import journal, patchset

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


# The one documented exception: the wheel's model_io.py is not upstream's (facts.md).
KNOWN_VARIANTS: Dict[str, Tuple[str, str]] = {
    "stable_diffusion/stable_diffusion/model_io.py": (
        "f3024ee11c5abbce06eb4ee6af486880ddb7b579",
        f"the documented {WHEEL} variant: 21 diff lines from upstream (an extra model "
        "entry, transformer_layers_per_block given as an int), same weight mapping",
    )
}
ALLOW_MODIFIED_ENV = "PULSE_ALLOW_MODIFIED_UPSTREAM"


class UpstreamError(Exception):
    """Upstream's files could not be found, fetched or verified."""


@dataclass
class FetchReport:
    root: Optional[Path]
    source: str
    verified: List[str]
    variants: List[str]  # KNOWN_VARIANTS found, accepted
    not_upstream: List[str]  # modified files, accepted only by allow_modified
    missing: List[str]  # upstream files the source does not carry
    applied: Optional[int] = None  # patches of the series found applied in the source


@dataclass
class Fetched:
    files: Dict[str, bytes]  # as the source holds them
    pristine: Dict[str, bytes]  # with the series reverted
    report: FetchReport


def git_blob_hash(data: bytes) -> str:
    """The hash ``git hash-object`` gives for these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _blob(rel: str, data: bytes) -> str:
    """The blob hash of a file as git stores it (CRLF checkouts read as LF)."""
    try:
        return git_blob_hash(str(patchset.decode_text(data, rel)).encode())
    except patchset.TreeError:
        return git_blob_hash(data)


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
    try:
        with zipfile.ZipFile(wheel) as zf:
            for rel in PACKAGE_FILES:
                member = "diffuse_mlx/stable_diffusion/" + Path(rel).name
                try:
                    files[rel] = zf.read(member)
                except KeyError:
                    continue
    except (OSError, zipfile.BadZipFile) as err:
        raise UpstreamError(f"cannot read the wheel {wheel}: {err}") from None
    return files


def _files_from_checkout(checkout: Path) -> Dict[str, bytes]:
    checkout = Path(checkout)
    if not (checkout / PACKAGE / "unet.py").is_file():
        raise UpstreamError(
            f"{checkout} is not an mlx-examples checkout: {PACKAGE}/unet.py is missing"
        )
    if os.path.lexists(checkout / journal.JOURNAL):
        raise UpstreamError(
            f"{checkout} holds the journal of an interrupted apply or revert; run "
            f"`python tools/patchset.py status {checkout}` first"
        )
    wanted = list(UPSTREAM_BLOBS) + patchset.new_files(patchset.load_series())
    try:
        return {
            rel: data
            for rel in wanted
            if (data := journal.read_file(checkout, rel)) is not None
        }
    except (OSError, journal.UnsafePath) as err:
        raise UpstreamError(f"cannot read upstream from {checkout}: {err}") from None


def allow_modified_from_env() -> bool:
    """Whether $PULSE_ALLOW_MODIFIED_UPSTREAM=1 accepts a modified checkout."""
    return os.environ.get(ALLOW_MODIFIED_ENV, "") == "1"


def read_upstream(
    checkout: Optional[Path] = None, allow_modified: bool = False
) -> Fetched:
    """Upstream's files from a checkout or the wheel, verified against the pinned hashes.

    A checkout may have the series applied: it is verified with the series reverted.
    Files that are not upstream's (nor the known variant) are refused, unless
    ``allow_modified`` and they come from a checkout.
    """
    files = _files_from_checkout(checkout) if checkout else _files_from_wheel()
    source = f"checkout {checkout}" if checkout else f"wheel {WHEEL}"
    missing = sorted(set(PACKAGE_FILES) - set(files))
    if missing:
        raise UpstreamError(f"{source} lacks upstream files: {', '.join(missing)}")
    series = patchset.load_series()
    pristine = dict(files)
    applied: Optional[int] = None
    try:
        applied = patchset.applied_count(files, series)
        reverse = [p.reversed() for p in reversed(series[:applied])]
        for rel, data in patchset.tree_bytes(
            patchset.apply_in_memory(files, reverse)
        ).items():
            if data is None:
                pristine.pop(rel, None)
            else:
                pristine[rel] = data
    except patchset.PatchError:
        pass  # not a state of the series: each differing file is named below
    verified, variants, modified = [], [], []
    for rel, data in sorted(pristine.items()):
        blob = _blob(rel, data)
        if blob == UPSTREAM_BLOBS.get(rel):
            verified.append(rel)
        elif blob == KNOWN_VARIANTS.get(rel, ("",))[0]:
            variants.append(rel)
        else:
            modified.append(rel)
    report = FetchReport(
        None,
        source,
        verified,
        variants,
        modified,
        sorted(set(UPSTREAM_BLOBS) - set(files)),
        applied,
    )
    if modified and not (checkout and allow_modified):
        named = "; ".join(
            f"{rel} (blob {_blob(rel, pristine[rel])[:12]}, upstream's "
            f"{UPSTREAM_BLOBS.get(rel, 'none: not an upstream file')[:12]})"
            for rel in modified
        )
        hint = (
            f" (to use your own modified checkout anyway: --allow-modified, "
            f"or {ALLOW_MODIFIED_ENV}=1)"
            if checkout
            else ""
        )
        raise UpstreamError(
            f"{source} is not upstream {UPSTREAM_COMMIT[:8]}: {named}; refusing "
            f"to use it{hint}"
        )
    return Fetched(files, pristine, report)


def write_folder(dest: Path, files: Dict[str, bytes]) -> None:
    """Write files as dest/REL, staged beside them and renamed into place (one rename
    per top-level name); a folder dest it made is removed again on failure."""
    top = {Path(rel).parts[0] for rel in files}
    made = not os.path.lexists(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".fetch.", suffix=".pulse-tmp", dir=dest))
        try:
            for rel, data in files.items():
                target = stage / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            for name in sorted(top):
                os.rename(stage / name, dest / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        raise


def fetch_upstream(
    dest: Path, checkout: Optional[Path] = None, allow_modified: bool = False
) -> FetchReport:
    """Write upstream's stable_diffusion folder under dest, laid out like a checkout root."""
    dest = Path(dest)
    if os.path.lexists(dest / "stable_diffusion"):
        raise UpstreamError(
            f"{dest / 'stable_diffusion'} already exists; choose an empty folder"
        )
    fetched = read_upstream(checkout, allow_modified)
    try:
        write_folder(dest, fetched.files)
    except OSError as err:
        raise UpstreamError(
            f"could not write {dest}: {err}; nothing was written there"
        ) from None
    fetched.report.root = dest
    return fetched.report


def modified_warning(report: FetchReport) -> str:
    """The line said every time a modified checkout is used."""
    return (
        f"warning: using a MODIFIED upstream from {report.source} "
        f"({ALLOW_MODIFIED_ENV}=1 / --allow-modified): not upstream's: "
        + ", ".join(report.not_upstream)
    )


def describe(report: FetchReport) -> str:
    """A plain account of what was fetched and what is not upstream's."""
    lines = [f"upstream stable_diffusion from {report.source} -> {report.root}"]
    if report.applied:
        lines.append(
            f"  the source has {report.applied} patch(es) of the series applied; "
            "verified with them reverted"
        )
    lines.append(
        f"  {len(report.verified)} files identical to upstream {UPSTREAM_COMMIT[:8]}"
    )
    for rel in report.variants:
        lines.append(
            f"  NOT upstream's file (content differs): {rel}: "
            f"{KNOWN_VARIANTS[rel][1]}; accepted"
        )
    for rel in report.not_upstream:
        lines.append(f"  MODIFIED, accepted by --allow-modified: {rel}")
    for rel in report.missing:
        lines.append(f"  not carried by this source: {rel}")
    if report.not_upstream:
        lines.append(modified_warning(report))
    return "\n".join(lines)


def checkout_from_env() -> Optional[Path]:
    """The mlx-examples checkout named by $PULSE_UPSTREAM_CHECKOUT, if any."""
    checkout = os.environ.get("PULSE_UPSTREAM_CHECKOUT")
    return Path(checkout) if checkout else None


def fetch_pristine(dest: Path) -> FetchReport:
    """Upstream under dest ($PULSE_UPSTREAM_CHECKOUT or the wheel) with the series reverted."""
    report = fetch_upstream(dest, checkout_from_env(), allow_modified_from_env())
    patchset.revert_series(dest, patchset.load_series())
    return report


def expected_tree(patched: bool = True) -> Tuple[Dict[str, bytes], FetchReport]:
    """The bytes of every file of upstream, plain or patched, computed in memory."""
    fetched = read_upstream(checkout_from_env(), allow_modified_from_env())
    files = dict(fetched.pristine)
    if patched:
        tree = patchset.apply_in_memory(files, patchset.load_series())
        for rel, data in patchset.tree_bytes(tree).items():
            if data is None:
                files.pop(rel, None)
            else:
                files[rel] = data
    return files, fetched.report


def _holds_exactly(folder: Path, files: Dict[str, bytes]) -> bool:
    """Whether folder holds these files, byte for byte, and no other (bytecode aside)."""
    found = {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
    }
    if found != set(files):
        return False
    try:
        return all(journal.read_file(folder, r) == d for r, d in files.items())
    except (OSError, journal.UnsafePath):
        return False


def prepared_tree(patched: bool = True) -> Path:
    """A cached upstream tree, patched or plain, made once and atomically.

    Upstream comes from the checkout named by $PULSE_UPSTREAM_CHECKOUT when set,
    else from the registry wheel, verified every time; the cached tree is named by
    its content and used only while it holds exactly that content.
    """
    files, report = expected_tree(patched)
    if report.not_upstream:
        print(modified_warning(report), file=sys.stderr)
    digest = hashlib.sha1()
    for rel, data in sorted(files.items()):
        digest.update(b"%s\0%d\0" % (rel.encode(), len(data)) + data)
    state = "patched" if patched else "plain"
    final = cache_dir() / f"upstream-{digest.hexdigest()[:12]}-{state}"
    if final.is_dir() and _holds_exactly(final, files):
        return final
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=cache_dir()))
    try:
        write_folder(tmp, files)
        if os.path.lexists(final):  # altered since it was made: set it aside
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not _holds_exactly(final, files):
        raise UpstreamError(f"the cached upstream tree {final} is not as made")
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
