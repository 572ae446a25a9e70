"""The patch series and tools/patchset.py: atomic, idempotent, reversible, upstream-clean."""

import errno
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from pulse_plugin import journal, patchset, upstream

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
    assert result.returncode == 2 and "mlx-examples checkout" in result.stderr


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


# ---------------------------------------------------------------- faults
# Every change the patch tool makes to a disk goes through these functions of
# journal.py; the tests below fail, interrupt or kill it at each one in turn.
WRITERS = ("_create", "_link", "_replace", "_unlink", "_mkdir", "_rmdir")
PKG = upstream.PACKAGE
LEFTOVERS = (".pulse-tmp", ".pulse-orig", journal.JOURNAL)


def full_snapshot(root):
    """Every entry under root: bytes and mode of files, link targets, folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[path.relative_to(root)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[path.relative_to(root)] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                data = path.read_bytes()
                out[path.relative_to(root)] = (data, stat.S_IMODE(st.st_mode))
    return out


def leftovers(root):
    return [p for p in Path(root).rglob("*") if p.name.endswith(LEFTOVERS)]


def fault_at(monkeypatch, n, make_error):
    """Make the nth disk change raise make_error(path); returns [calls, name hit]."""
    count = [0, None]
    for name in WRITERS:
        original = getattr(journal, name)

        def wrapped(*args, _original=original, _name=name):
            count[0] += 1
            if count[0] == n:
                count[1] = _name
                raise make_error(str(args[-1]))
            return _original(*args)

        monkeypatch.setattr(journal, name, wrapped)
    return count


def tool_main(*args):
    """tools/patchset.py's main() in this process."""
    spec = importlib.util.spec_from_file_location("patchset_tool", TOOL[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


@pytest.fixture
def states(tree):
    """Full snapshots of the tree plain and patched (the tree is left plain)."""
    plain = full_snapshot(tree)
    patchset.apply_series(tree, SERIES)
    patched = full_snapshot(tree)
    patchset.revert_series(tree, SERIES)
    assert full_snapshot(tree) == plain
    return {"plain": plain, "patched": patched}


def count_writes(tree, op, monkeypatch):
    """How many disk changes op makes (the tree is left plain)."""
    prepare(tree, op)
    with monkeypatch.context() as m:
        count = fault_at(m, 0, OSError)
        getattr(patchset, f"{op}_series")(tree, SERIES)
    patchset.revert_series(tree, SERIES)
    assert count[0] >= 10
    return count[0]


# (state before, state after, writes after the last rename: the backups, the journal)
OPS = {"apply": ("plain", "patched", 3), "revert": ("patched", "plain", 4)}


def finished(op, n, total):
    """Whether the nth write comes after every target was renamed into place."""
    return n > total - OPS[op][2]


def prepare(tree, op):
    if op == "revert":
        patchset.apply_series(tree, SERIES)


KILL_SCRIPT = """
import os, runpy, signal, sys
from pulse_plugin import journal
n, count = int(sys.argv[1]), [0]
for name in {writers!r}:
    def wrapped(*args, _original=getattr(journal, name)):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return _original(*args)
    setattr(journal, name, wrapped)
sys.argv = ["patchset.py", *sys.argv[2:]]
runpy.run_path({tool!r}, run_name="__main__")
""".format(
    writers=WRITERS, tool=TOOL[1]
)


@pytest.mark.parametrize("op", ["apply", "revert"])
def test_kill_9_between_any_two_writes_is_undone_or_finished_by_the_next_run(
    tree, states, op, monkeypatch
):
    """kill -9 at each disk change in turn; then status, apply, revert or check."""
    total = count_writes(tree, op, monkeypatch)
    start, end, _ = OPS[op]
    nexts = ["status", "apply", "revert", "check"]
    for n in range(1, total + 1):
        prepare(tree, op)
        assert full_snapshot(tree) == states[start]
        killed = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, str(n), op, str(tree)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert killed.returncode == -signal.SIGKILL, (n, killed.stderr)
        if n == 1:  # killed before writing the journal: nothing changed
            assert full_snapshot(tree) == states[start]
            patchset.revert_series(tree, SERIES)
            continue
        assert (tree / journal.JOURNAL).exists()
        command = nexts[n % len(nexts)]
        if command == "check":
            result = check_recovers(tree, monkeypatch)
        else:
            result = run_tool(command, str(tree))
        assert result.returncode == 0, (n, command, result.stderr)
        assert f"found an interrupted {op}" in result.stdout, (n, command)
        done = finished(op, n, total)
        assert ("finished it" if done else "undid it") in result.stdout
        assert not leftovers(tree), (n, command)
        if command in ("apply", "revert"):
            expected = "patched" if command == "apply" else "plain"
        else:
            expected = end if done else start
        assert full_snapshot(tree) == states[expected], (n, command)
        patchset.revert_series(tree, SERIES)


class Completed:
    returncode = 0


def check_recovers(tree, monkeypatch):
    """`check ROOT` in this process, its pytest run replaced by a no-op."""
    import io
    from contextlib import redirect_stdout

    spec = importlib.util.spec_from_file_location("patchset_tool", TOOL[1])
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    fake = types.SimpleNamespace(run=lambda *a, **k: Completed())
    monkeypatch.setattr(tool, "subprocess", fake)
    out = io.StringIO()
    with redirect_stdout(out):
        code = tool.main(["check", str(tree)])
    result = Completed()
    result.returncode, result.stdout, result.stderr = code, out.getvalue(), ""
    return result


@pytest.mark.parametrize("op", ["apply", "revert"])
def test_ctrl_c_at_any_write_undoes_everything(tree, states, op, monkeypatch, capsys):
    total = count_writes(tree, op, monkeypatch)
    start, end, _ = OPS[op]
    for n in range(1, total + 1):
        prepare(tree, op)
        with monkeypatch.context() as m:
            fault_at(m, n, lambda path: KeyboardInterrupt())
            code = tool_main(op, str(tree))
        err = capsys.readouterr().err
        done = finished(op, n, total)
        assert code == 130, n
        assert err.count("\n") == 1 and "interrupted" in err
        assert ("completed" if done else "nothing was changed") in err
        assert not leftovers(tree), n
        assert full_snapshot(tree) == states[end if done else start], n
        patchset.revert_series(tree, SERIES)


def enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def eperm(path):  # what rename onto an immutable (chattr +i) file gives
    return PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)


def eacces(path):
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def isadir(path):
    return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)


@pytest.mark.parametrize("op", ["apply", "revert"])
@pytest.mark.parametrize("make_error", [enospc, eperm, eacces, isadir])
def test_a_failing_write_is_undone_and_said_in_one_line(
    tree, states, op, make_error, monkeypatch, capsys
):
    total = count_writes(tree, op, monkeypatch)
    start, end, _ = OPS[op]
    for n in range(1, total + 1):
        prepare(tree, op)
        with monkeypatch.context() as m:
            count = fault_at(m, n, make_error)
            code = tool_main(op, str(tree))
        hit = count[1]
        err = capsys.readouterr().err
        assert not leftovers(tree), n
        if hit == "_link" and make_error is not enospc:
            # no hard link for the backup (EPERM, EXDEV, ...): it is copied
            assert code == 0 and full_snapshot(tree) == states[end], (n, err)
        elif finished(op, n, total):  # cleanup after the last rename: it stands
            assert code == 0 and full_snapshot(tree) == states[end], (n, err)
        else:
            assert code == 1, (n, err)
            assert err.count("\n") == 1 and "nothing was changed" in err, n
            assert os.strerror(make_error("x").errno) in err
            assert full_snapshot(tree) == states[start], n
        patchset.revert_series(tree, SERIES)


def test_a_full_disk_mid_file_leaves_no_truncated_file(
    tree, states, monkeypatch, capsys
):
    calls = [0]
    original = journal._write_all

    def half_then_enospc(fd, data):
        calls[0] += 1
        if calls[0] == 3:  # the second temporary file, half written
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(fd, data)

    monkeypatch.setattr(journal, "_write_all", half_then_enospc)
    assert tool_main("apply", str(tree)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was changed" in err
    assert not leftovers(tree) and full_snapshot(tree) == states["plain"]


def test_an_undo_that_fails_too_exits_3_and_the_next_run_finishes_it(
    tree, states, monkeypatch, capsys
):
    renames = []
    original = journal._replace

    def replace(src, dst):
        renames.append(src)
        # the second rename into place fails, and so does every rename back
        if len(renames) == 2 or src.name.endswith(".pulse-orig"):
            raise eperm(str(dst))
        original(src, dst)

    monkeypatch.setattr(journal, "_replace", replace)
    code = tool_main("apply", str(tree))
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1
    assert "part-way" in err and journal.JOURNAL in err
    assert full_snapshot(tree) != states["plain"]
    monkeypatch.undo()
    result = run_tool("status", str(tree))
    assert result.returncode == 0 and "found an interrupted apply" in result.stdout
    assert full_snapshot(tree) == states["plain"]


def test_a_journal_cut_short_is_removed_and_said(tree, states):
    (tree / journal.JOURNAL).write_text('{"op": "apply", "entr')
    result = run_tool("status", str(tree))
    assert result.returncode == 0 and "cut short before any change" in result.stdout
    assert full_snapshot(tree) == states["plain"]


def crash_after_first_rename(tree, monkeypatch):
    """An apply that dies (no undo) after renaming __init__.py into place."""
    with monkeypatch.context() as m:
        fault_at(m, 8, lambda path: KeyboardInterrupt())
        m.setattr(journal, "_recover_locked", lambda root: None)
        with pytest.raises(KeyboardInterrupt):
            patchset.apply_series(tree, SERIES)
    assert (tree / journal.JOURNAL).exists()
    return tree / PKG / "__init__.py"


def test_a_file_changed_after_the_interruption_is_not_touched(
    tree, states, monkeypatch
):
    renamed = crash_after_first_rename(tree, monkeypatch)
    key = renamed.relative_to(tree)
    assert full_snapshot(tree)[key] != states["plain"][key]
    renamed.write_text("edited by hand\n")
    before = full_snapshot(tree)
    result = run_tool("status", str(tree))
    assert result.returncode == 3 and "neither as before nor as after" in result.stderr
    assert full_snapshot(tree) == before


@pytest.mark.parametrize("field", ["path", "backup"])
def test_a_journal_naming_paths_outside_the_tree_is_not_acted_upon(
    tree, tmp_path, field, monkeypatch
):
    crash_after_first_rename(tree, monkeypatch)
    victim = tmp_path.parent / f"victim-{field}.py"
    victim.write_text("precious\n")
    text = (tree / journal.JOURNAL).read_text().splitlines()[0]
    record = json.loads(text)
    record["entries"][0][field] = os.path.relpath(victim, tree)
    (tree / journal.JOURNAL).write_bytes(journal._dump(record))
    before = full_snapshot(tree)
    result = run_tool("status", str(tree))
    assert result.returncode == 3 and "not a journal this tool wrote" in result.stderr
    assert full_snapshot(tree) == before and victim.read_text() == "precious\n"


def test_a_run_while_another_holds_the_tree_is_refused(tree, states):
    with journal.locked(Path(os.path.realpath(tree))):
        result = run_tool("apply", str(tree))
    assert result.returncode == 1 and "another run" in result.stderr
    assert "nothing was changed" in result.stderr
    assert full_snapshot(tree) == states["plain"]


# ---------------------------------------------------------------- links
def test_a_planted_tmp_symlink_is_never_written_through(tree, tmp_path, states):
    victim = tmp_path / "victim.py"
    victim.write_text("precious\n")
    for name in ("unet.py", "__init__.py", "hooks.py"):
        (tree / PKG / f"{name}.pulse-tmp").symlink_to(victim)
        (tree / PKG / f".{name}.pulse-tmp").symlink_to(victim)
    result = run_tool("apply", str(tree))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert patchset.applied_count(tree, SERIES) == len(SERIES)
    assert (tree / PKG / "unet.py.pulse-tmp").is_symlink()  # not ours: left alone


@pytest.mark.parametrize("link", ["stable_diffusion", PKG])
def test_a_folder_that_is_a_symlink_elsewhere_is_refused(tree, tmp_path, link):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(tree / link), elsewhere)
    (tree / link).symlink_to(elsewhere)
    before = full_snapshot(elsewhere)
    for command in ("apply", "status", "revert"):
        result = run_tool(command, str(tree))
        assert result.returncode == 1, (command, result.stderr)
        assert f"{tree / link} is a symbolic link (to {elsewhere})" in result.stderr
        assert "nothing was changed" in result.stderr
    assert full_snapshot(elsewhere) == before


@pytest.mark.parametrize("name", ["unet.py", "hooks.py"])
def test_a_file_that_is_a_symlink_is_refused(tree, tmp_path, name):
    victim = tmp_path / "victim.py"
    target = tree / PKG / name
    if target.exists():
        shutil.move(str(target), victim)
    else:
        victim.write_text("precious\n")
    before = victim.read_bytes()
    target.symlink_to(victim)
    result = run_tool("apply", str(tree))
    assert result.returncode == 1 and "is a symbolic link" in result.stderr
    assert victim.read_bytes() == before


@pytest.mark.parametrize("name", ["unet.py", "hooks.py"])
def test_a_folder_where_a_file_should_be_is_refused(tree, name):
    target = tree / PKG / name
    target.unlink(missing_ok=True)
    target.mkdir()
    before = full_snapshot(tree)
    result = run_tool("apply", str(tree))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"{target} is a folder; a file was expected there" in result.stderr
    assert "nothing was changed" in result.stderr
    assert full_snapshot(tree) == before


# ---------------------------------------------------------------- bytes, modes
def test_crlf_files_are_patched_as_crlf_and_reverted_byte_for_byte(tree):
    for path in (tree / PKG).glob("*.py"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    before = full_snapshot(tree)
    result = run_tool("apply", str(tree))
    assert result.returncode == 0, result.stderr
    for name in ("unet.py", "__init__.py"):
        data = (tree / PKG / name).read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n") > 0
    assert run_tool("status", str(tree)).returncode == 0
    assert run_tool("revert", str(tree)).returncode == 0
    assert full_snapshot(tree) == before


def test_mixed_line_endings_are_refused_clearly(tree):
    unet = tree / PKG / "unet.py"
    unet.write_bytes(unet.read_bytes().replace(b"\n", b"\r\n", 3))
    before = full_snapshot(tree)
    result = run_tool("apply", str(tree))
    assert result.returncode == 1 and "mixes line endings" in result.stderr
    assert "unet.py" in result.stderr and "nothing was changed" in result.stderr
    assert full_snapshot(tree) == before


def test_modes_are_kept_and_revert_gives_back_bytes_and_modes(tree):
    os.chmod(tree / PKG / "unet.py", 0o444)
    os.chmod(tree / PKG / "__init__.py", 0o600)
    before = full_snapshot(tree)
    assert run_tool("apply", str(tree)).returncode == 0
    assert stat.S_IMODE(os.stat(tree / PKG / "unet.py").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(tree / PKG / "__init__.py").st_mode) == 0o600
    assert run_tool("revert", str(tree)).returncode == 0
    assert full_snapshot(tree) == before


# ---------------------------------------------------------------- input
def test_missing_input_exits_2_and_says_nothing_changed(tree, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("empty")
    for args in (
        ("apply", str(tmp_path / "nowhere")),
        ("--series", str(tmp_path / "no-series"), "apply", str(tree)),
        ("status", str(tmp_path)),
    ):
        result = run_tool(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and "nothing was changed" in result.stderr
    assert "Exit codes" in run_tool("--help").stdout


def test_an_unreadable_file_is_one_line_not_a_traceback(tree, monkeypatch, capsys):
    def denied(root, rel):
        raise eacces(str(Path(root) / rel))

    monkeypatch.setattr(journal, "read_file", denied)
    assert tool_main("apply", str(tree)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err
    assert "nothing was changed" in err


# ---------------------------------------------------------------- upstream
def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr("diffuse_mlx/stable_diffusion/" + Path(rel).name, data)


@pytest.fixture
def wheel_files():
    with zipfile.ZipFile(upstream._download_wheel()) as zf:
        return {
            rel: zf.read("diffuse_mlx/stable_diffusion/" + Path(rel).name)
            for rel in upstream.PACKAGE_FILES
        }


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    monkeypatch.setenv("PULSE_CACHE", str(cache))
    monkeypatch.delenv("PULSE_UPSTREAM_CHECKOUT", raising=False)
    monkeypatch.delenv(upstream.ALLOW_MODIFIED_ENV, raising=False)
    return cache


def wheel_path(cache):
    return cache / "wheels" / "diffuse_mlx-0.1.2-py3-none-any.whl"


MODEL_IO = f"{PKG}/model_io.py"


def test_the_wheels_model_io_is_the_one_pinned_variant(wheel_files):
    blob = upstream.git_blob_hash(wheel_files[MODEL_IO])
    assert blob == upstream.KNOWN_VARIANTS[MODEL_IO][0]
    assert blob != upstream.UPSTREAM_BLOBS[MODEL_IO]
    for rel, data in wheel_files.items():
        if rel != MODEL_IO:
            assert upstream.git_blob_hash(data) == upstream.UPSTREAM_BLOBS[rel], rel


@pytest.mark.parametrize("name", ["unet.py", "model_io.py"])
def test_a_wheel_that_fails_the_pinned_hashes_is_refused(
    wheel_files, fake_cache, tmp_path, name, monkeypatch
):
    rel = f"{PKG}/{name}"
    bad = dict(wheel_files)
    bad[rel] = bad[rel] + b"\nimport os  # not upstream's\n"
    make_wheel(wheel_path(fake_cache), bad)
    env = {**os.environ, "PULSE_CACHE": str(fake_cache)}
    for extra in ([], ["--allow-modified"]):
        result = subprocess.run(
            [*TOOL, "fetch-upstream", str(tmp_path / "sd"), *extra],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert f"{rel} (blob" in result.stderr and "refusing" in result.stderr
        assert not (tmp_path / "sd").exists() or not any((tmp_path / "sd").iterdir())
    monkeypatch.setenv(upstream.ALLOW_MODIFIED_ENV, "1")
    with pytest.raises(upstream.UpstreamError, match="refusing"):
        upstream.prepared_tree(patched=True)
    assert not list(fake_cache.glob("upstream-*"))


def test_a_modified_checkout_is_refused_unless_allowed_and_then_said_every_time(
    pristine, tmp_path, fake_cache, monkeypatch, capsys
):
    checkout = tmp_path / "mine"
    shutil.copytree(pristine / "stable_diffusion", checkout / "stable_diffusion")
    with open(checkout / PKG / "vae.py", "a") as f:
        f.write("# my change\n")
    result = run_tool(
        "fetch-upstream", str(tmp_path / "a"), "--checkout", str(checkout)
    )
    assert result.returncode == 2 and "vae.py" in result.stderr
    assert "--allow-modified" in result.stderr
    result = run_tool(
        "fetch-upstream",
        str(tmp_path / "b"),
        "--checkout",
        str(checkout),
        "--allow-modified",
    )
    assert result.returncode == 0
    assert f"MODIFIED, accepted by --allow-modified: {PKG}/vae.py" in result.stdout
    assert "warning: using a MODIFIED upstream" in result.stderr
    monkeypatch.setenv("PULSE_UPSTREAM_CHECKOUT", str(checkout))
    with pytest.raises(upstream.UpstreamError, match="vae.py"):
        upstream.prepared_tree(patched=False)
    monkeypatch.setenv(upstream.ALLOW_MODIFIED_ENV, "1")
    for _ in range(2):
        root = upstream.prepared_tree(patched=False)
        assert "warning: using a MODIFIED upstream" in capsys.readouterr().err
    assert (root / PKG / "vae.py").read_text().endswith("# my change\n")


def test_a_checkout_with_an_interrupted_run_is_not_copied(pristine, tmp_path):
    checkout = tmp_path / "mine"
    shutil.copytree(pristine / "stable_diffusion", checkout / "stable_diffusion")
    (checkout / journal.JOURNAL).write_text("x")
    with pytest.raises(upstream.UpstreamError, match="interrupted"):
        upstream.fetch_upstream(tmp_path / "copy", checkout)


def test_a_cached_tree_altered_after_it_was_made_is_rebuilt(
    wheel_files, fake_cache, monkeypatch
):
    make_wheel(wheel_path(fake_cache), wheel_files)
    root = upstream.prepared_tree(patched=True)
    unet = root / PKG / "unet.py"
    good = unet.read_bytes()
    unet.write_bytes(good + b"\nprint('tampered')\n")
    (root / PKG / "extra.py").write_text("print('planted')\n")
    again = upstream.prepared_tree(patched=True)
    assert again == root and (again / PKG / "unet.py").read_bytes() == good
    assert not (again / PKG / "extra.py").exists()


def test_export_into_a_folder_that_is_not_empty_exits_2(tmp_path):
    (tmp_path / "pr").mkdir()
    (tmp_path / "pr" / "mine.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    for out in ("pr", "file"):
        result = run_tool("export", str(tmp_path / out))
        assert result.returncode == 2 and "is not an empty folder" in result.stderr
    assert os.listdir(tmp_path / "pr") == ["mine.txt"]
