"""The patch series and tools/patchset.py: atomic, idempotent, reversible, upstream-clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pulse_plugin import patchset, upstream

REPO = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, str(REPO / "tools" / "patchset.py")]
SERIES = patchset.load_series()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    upstream.fetch_pristine(root)
    return root


@pytest.fixture
def tree(pristine, tmp_path):
    shutil.copytree(pristine / "stable_diffusion", tmp_path / "stable_diffusion")
    return tmp_path


def snapshot(root):
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_tool(*args):
    return subprocess.run([*TOOL, *args], capture_output=True, text=True)


def test_fetch_verifies_blobs_and_names_the_file_that_is_not_upstream(
    pristine, tmp_path
):
    for rel, blob in upstream.UPSTREAM_BLOBS.items():
        path = pristine / rel
        if rel.endswith("model_io.py") or not path.exists():
            continue
        assert upstream.git_blob_hash(path.read_bytes()) == blob, rel
    result = run_tool("fetch-upstream", str(tmp_path / "wheel"))
    assert result.returncode == 0
    model_io = "stable_diffusion/stable_diffusion/model_io.py"
    assert f"NOT upstream's file (content differs): {model_io}" in result.stdout
    result = run_tool(
        "fetch-upstream", str(tmp_path / "copy"), "--checkout", str(pristine)
    )
    assert (
        result.returncode == 0
        and f"NOT upstream's file (content differs): {model_io}" in result.stdout
    )


def test_a_patched_checkout_serves_as_upstream(pristine, tmp_path):
    before = snapshot(pristine)
    patchset.apply_series(pristine, SERIES)
    try:
        report = upstream.fetch_upstream(tmp_path / "copy", pristine)
        assert report.applied == len(SERIES) and not report.not_upstream
        assert patchset.revert_series(tmp_path / "copy", SERIES)[0] == len(SERIES)
        assert snapshot(tmp_path / "copy") == before
    finally:
        patchset.revert_series(pristine, SERIES)


def test_apply_revert_round_trip_restores_upstream_byte_for_byte(tree):
    before = snapshot(tree)
    assert patchset.apply_series(tree, SERIES)[0] == len(SERIES)
    assert snapshot(tree) != before
    assert (tree / upstream.PACKAGE / "hooks.py").is_file()
    assert patchset.revert_series(tree, SERIES)[0] == len(SERIES)
    assert snapshot(tree) == before


def test_double_apply_is_a_no_op(tree):
    assert run_tool("apply", str(tree)).returncode == 0
    after = snapshot(tree)
    result = run_tool("apply", str(tree))
    assert result.returncode == 0 and "already applied" in result.stdout
    assert snapshot(tree) == after
    status = run_tool("status", str(tree))
    assert f"{len(SERIES)} of {len(SERIES)} patches applied" in status.stdout


def test_partially_applied_tree_is_completed(tree):
    patchset.apply_series(tree, SERIES[:1])
    assert patchset.applied_count(tree, SERIES) == 1
    assert patchset.apply_series(tree, SERIES)[0] == len(SERIES) - 1
    assert patchset.applied_count(tree, SERIES) == len(SERIES)


def test_wrong_upstream_fails_cleanly_and_changes_nothing(tree):
    unet = tree / upstream.PACKAGE / "unet.py"
    text = unet.read_text()
    unet.write_text(
        text.replace(
            "        y = self.attn1(y, y, y, attn_mask)",
            "        y = self.attn1(y, y, y, None)",
        )
    )
    before = snapshot(tree)
    result = run_tool("apply", str(tree))
    assert result.returncode == 1
    assert "unet.py" in result.stderr and "hunk" in result.stderr
    assert "nothing was changed" in result.stderr
    assert snapshot(tree) == before


def test_paths_outside_the_target_are_refused(tree, tmp_path):
    bad = tmp_path / "series"
    bad.mkdir()
    text = SERIES[0].text.replace(
        "b/stable_diffusion/stable_diffusion/hooks.py", "b/../escaped.py"
    )
    (bad / "0001-bad.patch").write_text(text)
    before = snapshot(tree)
    result = run_tool("--series", str(bad), "apply", str(tree))
    assert result.returncode == 1 and "outside the target folder" in result.stderr
    assert snapshot(tree) == before and not (tree.parent / "escaped.py").exists()


def test_missing_root_is_a_usage_error(tmp_path):
    result = run_tool("apply", str(tmp_path / "nowhere"))
    assert result.returncode != 0 and "mlx-examples checkout" in result.stderr


@pytest.mark.parametrize(
    "command", ["fetch-upstream", "apply", "revert", "status", "check", "export"]
)
def test_every_subcommand_has_help(command):
    result = run_tool(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_export_writes_a_series_that_applies(tmp_path, tree):
    out = tmp_path / "pr"
    assert run_tool("export", str(out)).returncode == 0
    exported = patchset.load_series(out)
    assert [p.name for p in exported] == [p.name for p in SERIES]
    assert patchset.apply_series(tree, exported)[0] == len(SERIES)


def test_patches_are_git_am_ready(tmp_path, pristine):
    """git am on a repository of upstream's files gives one commit per patch."""
    repo = tmp_path / "mlx-examples"
    shutil.copytree(pristine / "stable_diffusion", repo / "stable_diffusion")
    git = [
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
    ]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "upstream"], check=True)
    files = [str(p) for p in patchset.series_files()]
    subprocess.run([*git, "am", "-q", *files], check=True)
    log = subprocess.run(
        [*git, "log", "--format=%s"], capture_output=True, text=True, check=True
    )
    assert len(log.stdout.splitlines()) == len(SERIES) + 1


def test_patched_files_are_black_and_isort_clean_and_small(tree):
    patchset.apply_series(tree, SERIES)
    pkg = tree / upstream.PACKAGE
    files = [str(pkg / name) for name in ("__init__.py", "unet.py", "hooks.py")]
    black = [sys.executable, "-m", "black", "--check", "-q"]
    isort = [sys.executable, "-m", "isort", "--check", "--profile=black"]
    assert subprocess.run([*black, *files]).returncode == 0
    assert subprocess.run([*isort, *files]).returncode == 0
    counts = patchset.line_counts(SERIES)
    created = patchset.new_files(SERIES)
    changed_existing = sum(
        a + r for path, (a, r) in counts.items() if path not in created
    )
    assert 0 < changed_existing < 80
    assert len((pkg / "hooks.py").read_text().splitlines()) < 120
