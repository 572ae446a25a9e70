"""Crash-safe changes to a set of files under one folder, with a journal to undo them.

``write_files`` changes files so that an interruption at any point (an exception,
Ctrl-C, ``kill -9``, a power cut) can be undone by ``recover``, which the next run
of the patch tool calls first:

0. Every path is checked: inside the folder, no symbolic link on the way, a
   regular file or absent, and still holding the bytes the change was planned on.
1. The journal (``ROOT/.pulse-patchset.journal``) is written, exclusively, and
   synced: every file, its old and new hashes, and the names of its temporary
   file and its backup.
2. Missing folders are made; each new content is written to its temporary file
   (created with O_CREAT|O_EXCL, never through an existing name) with the old
   file's mode; each old file is kept as a backup (a hard link, else a copy).
3. Each temporary file is renamed over its target (or the target is removed).
4. The backups, then the journal, are removed.

Steps 0-2 change no target. A failure anywhere is undone from the backups before
the error is raised; ``recover`` finishes a change whose every target is already
new, and undoes any other.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

JOURNAL = ".pulse-patchset.journal"
_TMP = ".pulse-tmp"
_BACKUP = ".pulse-orig"

Change = Tuple[Optional[bytes], Optional[bytes]]  # (old, new); None: absent


class JournalError(Exception):
    """A change could not be made safely; ``changed`` says if the tree is part-way."""

    changed = False


class UnsafePath(JournalError):
    """A path is a link, leaves the folder, or is not a regular file."""

    def __init__(self, message: str, changed: bool = False):
        super().__init__(message)
        self.changed = changed


class Busy(JournalError):
    """Another run holds the folder's lock."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during write_files, after the change was undone (or found complete)."""

    def __init__(self, completed: bool):
        super().__init__()
        self.completed = completed


class WriteError(JournalError):
    """Writing failed; ``changed`` is True when the undo failed too."""

    def __init__(self, message: str, changed: bool = False):
        super().__init__(message)
        self.changed = changed


@dataclass
class Recovery:
    """What ``recover`` found and did."""

    op: str
    started: str
    action: str  # "undone", "finished" or "discarded"
    files: List[str] = field(default_factory=list)

    def describe(self, root: Path) -> str:
        files = ", ".join(self.files) or "none"
        if self.action == "discarded":
            return (
                f"found the journal of a {self.op} cut short before any change "
                f"in {root}; removed it (nothing had changed)"
            )
        verb = "undid" if self.action == "undone" else "finished"
        state = "as it was before" if self.action == "undone" else "as after"
        return (
            f"found an interrupted {self.op} (started {self.started}) in {root}; "
            f"{verb} it: the tree is {state} that {self.op} "
            f"(files put right: {files})"
        )


def _sha(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else hashlib.sha256(data).hexdigest()


# The primitives below are every change this module makes to the disk.


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(path: Path, data: bytes, mode: Optional[int]) -> None:
    """Write a new file exclusively; on any failure no file is left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        _write_all(fd, data)
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _link(src: Path, dst: Path) -> None:
    os.link(src, dst, follow_symlinks=False)


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _unlink(path: Path) -> None:
    os.unlink(path)


def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _rmdir(path: Path) -> None:
    os.rmdir(path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _walk(root: Path, rel: str) -> Optional[os.stat_result]:
    """The lstat of root/rel (None if absent), refusing links and non-folders on the way."""
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or not parts:
        raise UnsafePath(f"refusing the path {rel!r}: it leaves {root}")
    path = Path(root)
    st: Optional[os.stat_result] = None
    for i, part in enumerate(parts):
        path = path / part
        st = _lstat(path)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                f"{path} is a symbolic link (to {os.readlink(path)}); the patch tool "
                f"does not follow links and writes only inside {root}"
            )
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{path} is not a folder")
    real, inside = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, inside]) != inside:
        raise UnsafePath(f"{path} resolves to {real}, outside {root}")
    return st


def check_path(root: Path, rel: str) -> Optional[os.stat_result]:
    """The lstat of root/rel, None if absent; UnsafePath unless it is a regular file
    reached through real folders inside root."""
    st = _walk(root, rel)
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UnsafePath(f"{Path(root) / rel} is {kind}; a file was expected there")
    return st


def read_file(root: Path, rel: str) -> Optional[bytes]:
    """The bytes of root/rel (None if absent), after check_path."""
    if check_path(root, rel) is None:
        return None
    with open(Path(root) / rel, "rb") as f:
        return f.read()


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder, or raise Busy (no lock where the file
    system has none: the journal's exclusive creation still stops a second writer)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(
                f"another run of the patch tool is changing {root} now"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _token_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def _dump(record: dict) -> bytes:
    body = json.dumps(record, sort_keys=True)
    return f"{body}\nsha256 {hashlib.sha256(body.encode()).hexdigest()}\n".encode()


def _load(data: bytes) -> Optional[dict]:
    """The journal's record, or None if it was cut short (never acted upon)."""
    try:
        body, check, end = data.decode().split("\n")
    except (UnicodeDecodeError, ValueError):
        return None
    if end or check != f"sha256 {hashlib.sha256(body.encode()).hexdigest()}":
        return None
    return json.loads(body)


def _check_record(root: Path, record: dict) -> None:
    """Refuse a journal this tool did not write: every name must stay inside root."""

    def beside(name: str, rel: str) -> None:
        if Path(name).parent != Path(rel).parent or Path(name).name in ("", ".."):
            raise UnsafePath(f"{name!r} is not beside {rel!r}")

    try:
        for e in record["entries"]:
            rel = Path(e["path"])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise UnsafePath(f"{e['path']!r} leaves {root}")
            if str(rel.parent) != ".":
                _walk(root, str(rel.parent))  # real folders inside root
            for key in ("tmp", "backup"):
                if e[key] is not None:
                    beside(e[key], e["path"])
            for key in ("old", "new"):
                if e[key] is not None and not isinstance(e[key], str):
                    raise TypeError(f"{key} is not a hash")
        for folder in record["dirs"]:
            _walk(root, folder)
        str(record["op"]), str(record["started"])
    except (KeyError, TypeError, AttributeError, UnsafePath) as err:
        raise UnsafePath(
            f"{root / JOURNAL} is not a journal this tool wrote ({err}); "
            "not acting on it: look at it, then remove it by hand",
            changed=True,
        ) from None


def _state(path: Path) -> Tuple[str, Optional[str]]:
    """('absent', None), ('file', sha256) or ('other', None) without following links."""
    st = _lstat(path)
    if st is None:
        return "absent", None
    if not stat.S_ISREG(st.st_mode):
        return "other", None
    return "file", _sha(path.read_bytes())


def _is(state: Tuple[str, Optional[str]], sha: Optional[str]) -> bool:
    return state == (("absent", None) if sha is None else ("file", sha))


def _recover_locked(root: Path) -> Optional[Recovery]:
    journal = root / JOURNAL
    if _lstat(journal) is None:
        return None
    if not stat.S_ISREG(os.lstat(journal).st_mode):
        raise UnsafePath(
            f"{journal} is not a regular file; remove it by hand", changed=True
        )
    record = _load(journal.read_bytes())
    if record is None:
        _unlink(journal)
        return Recovery("change", "?", "discarded")
    _check_record(root, record)
    entries = record["entries"]
    states = [_state(root / e["path"]) for e in entries]
    done = all(_is(s, e["new"]) for s, e in zip(states, entries))
    redo: List[dict] = []
    for state, e in zip(states, entries):
        if done or _is(state, e["old"]):
            continue
        if not _is(state, e["new"]):
            raise WriteError(
                f"{root / e['path']} is neither as before nor as after the "
                f"interrupted {record['op']} (journal {journal}); nothing was "
                "touched: restore it by hand, then remove the journal",
                changed=True,
            )
        if e["old"] is not None and not _is(_state(root / e["backup"]), e["old"]):
            raise WriteError(
                f"the backup of {e['path']} ({e['backup']}) is missing or damaged "
                f"(journal {journal}); nothing was touched",
                changed=True,
            )
        redo.append(e)
    for e in redo:
        if e["old"] is None:
            _unlink(root / e["path"])
        else:
            _replace(root / e["backup"], root / e["path"])
    for e in entries:
        for name in (e["tmp"], e["backup"]):
            if name and _lstat(root / name) is not None:
                _unlink(root / name)
    if not done:
        for folder in reversed(record["dirs"]):
            path = root / folder
            if _lstat(path) is not None and not any(os.scandir(path)):
                _rmdir(path)
    _sync_dirs(root, entries)
    _unlink(journal)
    _sync_dir(root)
    action = "finished" if done else "undone"
    files = [e["path"] for e in (entries if done else redo)]
    return Recovery(record["op"], record["started"], action, files)


def _sync_dirs(root: Path, entries: List[dict]) -> None:
    for folder in sorted({str(Path(e["path"]).parent) for e in entries}):
        if (root / folder).is_dir():
            _sync_dir(root / folder)


def recover(root: Path) -> Optional[Recovery]:
    """Finish or undo an interrupted change under root; None if there was none."""
    root = Path(os.path.realpath(root))
    with locked(root):
        try:
            return _recover_locked(root)
        except JournalError:
            raise
        except BaseException as err:
            raise WriteError(
                f"finishing or undoing the interrupted change in {root} failed "
                f"({describe_os_error(err)}); the journal {root / JOURNAL} is kept "
                "and the next run tries again",
                changed=True,
            ) from err


def _missing_dirs(root: Path, rels: List[str]) -> List[str]:
    dirs: List[str] = []
    for rel in rels:
        parents = list(reversed(Path(rel).parents))[1:]
        for parent in parents:
            if _lstat(root / parent) is None and str(parent) not in dirs:
                dirs.append(str(parent))
    return dirs


def write_files(root: Path, changes: Dict[str, Change], op: str) -> List[str]:
    """Make each file root/rel go from old to new bytes, all or none of them."""
    root = Path(os.path.realpath(root))
    with locked(root):
        if _recover_locked(root) is not None:
            raise WriteError(f"{root} changed while the change was planned; run again")
        entries = []
        modes: Dict[str, Optional[int]] = {}
        for rel, (old, new) in sorted(changes.items()):
            st = check_path(root, rel)
            if _sha(read_file(root, rel)) != _sha(old):
                raise WriteError(f"{root / rel} changed while the change was planned")
            modes[rel] = None if st is None else stat.S_IMODE(st.st_mode)
            target = Path(rel)
            entries.append(
                {
                    "path": rel,
                    "old": _sha(old),
                    "new": _sha(new),
                    "tmp": str(_token_name(target, _TMP)) if new is not None else None,
                    "backup": (
                        str(_token_name(target, _BACKUP)) if old is not None else None
                    ),
                }
            )
        if not entries:
            return []
        dirs = _missing_dirs(root, list(changes))
        for folder in dirs:
            _walk(root, folder)
        record = {
            "op": op,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid": os.getpid(),
            "entries": entries,
            "dirs": dirs,
        }
        try:
            _create(root / JOURNAL, _dump(record), None)
        except FileExistsError:
            raise WriteError(
                f"{root / JOURNAL} appeared meanwhile; run again"
            ) from None
        except OSError as err:
            raise WriteError(f"could not write the journal: {err}") from None
        try:
            _sync_dir(root)
            _make(root, entries, dirs, changes, modes)
            _sync_dirs(root, entries)
            for e in entries:
                if e["backup"]:
                    _unlink(root / e["backup"])
            _unlink(root / JOURNAL)
            _sync_dir(root)
        except BaseException as err:
            _undo_after(root, err)
        return [e["path"] for e in entries]


def _make(
    root: Path,
    entries: List[dict],
    dirs: List[str],
    changes: Dict[str, Change],
    modes: Dict[str, Optional[int]],
) -> None:
    """Steps 2 and 3: temporary files and backups, then the renames into place."""
    for folder in dirs:
        _mkdir(root / folder)
    for e in entries:
        old, new = changes[e["path"]]
        if new is not None:
            _create(root / e["tmp"], new, modes[e["path"]])
        if old is not None:
            try:
                _link(root / e["path"], root / e["backup"])
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                _create(root / e["backup"], old, modes[e["path"]])
    for e in entries:
        if e["tmp"]:
            _replace(root / e["tmp"], root / e["path"])
        else:
            _unlink(root / e["path"])


def _undo_after(root: Path, err: BaseException) -> None:
    """Undo a failed write_files, then raise what says what holds (return: it was done)."""
    try:
        recovery = _recover_locked(root)
    except BaseException as undo_err:
        raise WriteError(
            f"{describe_os_error(err)}; undoing it failed too ({describe_os_error(undo_err)}): the tree is "
            f"part-way; the journal {root / JOURNAL} keeps what is needed and the "
            "next run of the patch tool finishes the undo",
            changed=True,
        ) from err
    completed = recovery is not None and recovery.action == "finished"
    if isinstance(err, KeyboardInterrupt):
        raise Interrupted(completed) from err
    if completed:
        return
    if isinstance(err, OSError):
        raise WriteError(f"writing failed: {describe_os_error(err)} (undone)") from err
    raise err


def describe_os_error(err: BaseException) -> str:
    """One line for an error, naming the file for an OSError."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
