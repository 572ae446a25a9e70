#!/usr/bin/env python3
"""Fetch upstream MLX Stable Diffusion, apply or revert this project's patch series, check it.

Every subcommand that takes ROOT expects an mlx-examples checkout root (or a
folder made by fetch-upstream): the series patches ROOT/stable_diffusion/.

Exit codes: 0 done (or nothing to do), 1 the tree does not fit the series or a
check failed, 2 bad usage or missing input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pulse_plugin import patchset, upstream  # noqa: E402

PARITY_TESTS = ["tests/test_parity.py", "tests/test_hooks.py", "tests/test_patchset.py"]


def _root(path: str) -> Path:
    root = Path(path)
    if not (root / upstream.PACKAGE).is_dir():
        raise SystemExit(
            f"error: {root} has no {upstream.PACKAGE}/ folder; "
            "give the root of an mlx-examples checkout (or of a fetch-upstream folder)"
        )
    return root


def _series(args) -> list:
    return patchset.load_series(Path(args.series))


def cmd_fetch(args) -> int:
    dest = Path(args.dest)
    checkout = Path(args.checkout) if args.checkout else None
    report = upstream.fetch_upstream(dest, checkout)
    print(upstream.describe(report))
    return 0


def cmd_status(args) -> int:
    root, series = _root(args.root), _series(args)
    k = patchset.applied_count(root, series)
    for i, patch in enumerate(series):
        state = "applied" if i < k else "not applied"
        print(f"{state:12} {patch.name}: {patch.subject}")
    print(f"{k} of {len(series)} patches applied to {root}")
    created = patchset.new_files(series)
    for path, (added, removed) in patchset.line_counts(series).items():
        kind = "new file" if path in created else "existing file"
        print(f"  {path} ({kind}): +{added} -{removed}")
    return 0


def cmd_apply(args) -> int:
    root, series = _root(args.root), _series(args)
    n, changed = patchset.apply_series(root, series)
    if n == 0:
        print(f"already applied: all {len(series)} patches are in {root}")
    else:
        print(f"applied {n} patch(es); changed: {', '.join(changed)}")
    return 0


def cmd_revert(args) -> int:
    root, series = _root(args.root), _series(args)
    n, changed = patchset.revert_series(root, series)
    if n == 0:
        print(f"nothing to revert: no patch of the series is applied in {root}")
    else:
        print(f"reverted {n} patch(es); changed: {', '.join(changed)}")
    return 0


def cmd_check(args) -> int:
    env = dict(os.environ)
    if args.root:
        root = _root(args.root)
        env["PULSE_UPSTREAM_CHECKOUT"] = str(root.resolve())
    cmd = [sys.executable, "-m", "pytest", "-q", *PARITY_TESTS]
    print("running:", " ".join(cmd))
    return 0 if subprocess.run(cmd, cwd=REPO, env=env).returncode == 0 else 1


def cmd_export(args) -> int:
    out = Path(args.outdir)
    series = _series(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(args.checkout) if args.checkout else None
        upstream.fetch_upstream(Path(tmp), checkout)
        patchset.apply_series(Path(tmp), series)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for path in patchset.series_files(Path(args.series)):
        shutil.copyfile(path, out / path.name)
    print(f"wrote {len(series)} patches to {out}; they apply cleanly to upstream.")
    print(f"on an mlx-examples checkout: git am {out}/*.patch")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchset.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--series",
        default=str(patchset.SERIES_DIR),
        help="folder of *.patch files (default: this project's patches/)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "fetch-upstream",
        help="write upstream's stable_diffusion folder under DEST",
        description="Write upstream's stable_diffusion/ folder as DEST/stable_diffusion/, "
        "from a local mlx-examples checkout or, by default, from the PyPI wheel "
        f"{upstream.WHEEL}, verifying every file against upstream's git blob hashes "
        "and naming each file that is not upstream's.",
    )
    p.add_argument(
        "dest", help="folder to create (must not hold stable_diffusion/ yet)"
    )
    p.add_argument("--checkout", help="an mlx-examples checkout to copy from")
    p.set_defaults(func=cmd_fetch)

    for name, func, text in (
        ("apply", cmd_apply, "apply the series (all or nothing; twice is a no-op)"),
        ("revert", cmd_revert, "revert the series (all or nothing)"),
        ("status", cmd_status, "say which patches of the series are applied"),
    ):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ".")
        p.add_argument(
            "root", help="mlx-examples checkout root (holds stable_diffusion/)"
        )
        p.set_defaults(func=func)

    p = sub.add_parser(
        "check",
        help="run the identity-parity and property tests",
        description="Apply the series to fresh upstream copies and run the identity-parity, "
        "hook and patch tests. With ROOT, upstream is copied from that checkout.",
    )
    p.add_argument(
        "root", nargs="?", help="optional mlx-examples checkout to take upstream from"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "export",
        help="write the series for git am / a pull request",
        description="Verify that the series applies to clean upstream, then copy it to OUTDIR.",
    )
    p.add_argument("outdir", help="empty or new folder for the patch files")
    p.add_argument("--checkout", help="an mlx-examples checkout to verify against")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except patchset.PatchError as err:
        print(f"error: {err}\nnothing was changed.", file=sys.stderr)
        return 1
    except upstream.UpstreamError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
