#!/usr/bin/env python3
"""Fetch upstream MLX Stable Diffusion, apply or revert this project's patch series, check it.

Every subcommand that takes ROOT expects an mlx-examples checkout root (or a
folder made by fetch-upstream): the series patches ROOT/stable_diffusion/.

apply and revert change all files or none: a journal is written before the first
change, and if a run is interrupted (Ctrl-C, kill -9, a full disk, a power cut)
the next run of any subcommand on that ROOT undoes it first and says so. The
tool writes only inside ROOT: it follows no symbolic link there, creates its
temporary files exclusively, and keeps each file's bytes (CRLF stays CRLF) and
mode (0444 stays 0444); revert gives back the exact bytes.

Exit codes (every failure is one line on stderr that says whether anything changed):
  0    done, or nothing to do
  1    nothing was changed: the tree is in a state the series cannot apply to
       (a hunk does not fit, a link or folder where a file should be, not UTF-8,
       mixed line endings) or cannot be written (permission, full disk), and any
       partial change was undone; or `check` failed
  2    bad usage or missing input (no ROOT, no series, a fetched upstream that is
       not upstream's); nothing was changed
  3    a failure part-way could not be undone: the tree is part-way and the line
       names the journal; the next run of any subcommand finishes the undo
  130  interrupted (Ctrl-C); what had changed was undone
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pulse_plugin import journal, patchset, upstream  # noqa: E402

ALLOW_HELP = (
    "accept a checkout whose files differ from upstream's (your own modified "
    "checkout); said every time it is used. A wheel that fails is always refused"
)
PARITY_TESTS = ["tests/test_parity.py", "tests/test_hooks.py", "tests/test_patchset.py"]


class UsageError(Exception):
    """Bad usage or missing input: exit 2."""


def _root(path: str) -> Path:
    """ROOT, after finishing or undoing an interrupted apply or revert there."""
    root = Path(path)
    if not (root / upstream.PACKAGE).is_dir():
        raise UsageError(
            f"{root} has no {upstream.PACKAGE}/ folder; "
            "give the root of an mlx-examples checkout (or of a fetch-upstream folder)"
        )
    recovery = patchset.recover(root)
    if recovery is not None:
        print(recovery.describe(root))
    return root


def _series(args) -> list:
    return patchset.load_series(Path(args.series))


def cmd_fetch(args) -> int:
    dest = Path(args.dest)
    checkout = Path(args.checkout) if args.checkout else None
    report = upstream.fetch_upstream(dest, checkout, args.allow_modified)
    print(upstream.describe(report))
    if report.not_upstream:
        print(upstream.modified_warning(report), file=sys.stderr)
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
    if args.allow_modified:
        env[upstream.ALLOW_MODIFIED_ENV] = "1"
        print(f"warning: {upstream.ALLOW_MODIFIED_ENV}=1: a modified upstream is used")
    cmd = [sys.executable, "-m", "pytest", "-q", *PARITY_TESTS]
    print("running:", " ".join(cmd))
    return 0 if subprocess.run(cmd, cwd=REPO, env=env).returncode == 0 else 1


def cmd_export(args) -> int:
    out = Path(args.outdir)
    if os.path.lexists(out) and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} is not an empty folder")
    series = _series(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(args.checkout) if args.checkout else None
        upstream.fetch_upstream(Path(tmp), checkout)
        patchset.apply_series(Path(tmp), series)
    upstream.write_folder(
        out, {p.name: p.read_bytes() for p in patchset.series_files(Path(args.series))}
    )
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
        "(a checkout with the series applied is verified with it reverted). A file "
        "that is not upstream's is refused, naming it (exit 2), except the wheel's "
        "model_io.py, a documented variant. The folder appears whole or not at all.",
    )
    p.add_argument(
        "dest", help="folder to create (must not hold stable_diffusion/ yet)"
    )
    p.add_argument("--checkout", help="an mlx-examples checkout to copy from")
    p.add_argument("--allow-modified", action="store_true", help=ALLOW_HELP)
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
    p.add_argument("--allow-modified", action="store_true", help=ALLOW_HELP)
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


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, patchset.InputError, upstream.UpstreamError) as err:
        return _fail(f"{err}; nothing was changed", 2)
    except journal.JournalError as err:
        if err.changed:
            return _fail(str(err), 3)
        return _fail(f"{err}; nothing was changed", 1)
    except patchset.PatchError as err:
        return _fail(f"{err}; nothing was changed", 1)
    except journal.Interrupted as err:
        done = "the change had completed" if err.completed else "nothing was changed"
        return _fail(f"interrupted; {done}", 130)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was changed", 130)
    except OSError as err:
        return _fail(f"{journal.describe_os_error(err)}; nothing was changed", 1)


if __name__ == "__main__":
    sys.exit(main())
