"""Apply, revert and inspect the upstream patch series, all or nothing.

The series is a list of ``git format-patch`` files. Everything is computed in
memory first; files on disk change only once every hunk of every patch fits, and
then through journal.py, so that an interrupted apply or revert is undone by the
next run. Bytes and modes are kept: a CRLF file stays CRLF, a 0444 file 0444.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import journal

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# a link to ../patches in the repo
SERIES_DIR = Path(__file__).resolve().parent / "patches"


class PatchError(Exception):
    """A patch does not fit the target tree, or is malformed or unsafe."""


class TreeError(PatchError):
    """A file the series touches cannot be patched safely: a link, a folder, not text."""


class InputError(Exception):
    """The series folder or one of its files is missing or unreadable."""


@dataclass
class Hunk:
    old_start: int
    old: List[str]
    new: List[str]
    removed: int = 0
    added: int = 0


@dataclass
class FilePatch:
    old_path: Optional[str]  # None for a new file
    new_path: Optional[str]  # None for a deleted file
    hunks: List[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path

    def reversed(self) -> "FilePatch":
        hunks = [
            Hunk(h.old_start, h.new, h.old, h.added, h.removed) for h in self.hunks
        ]
        return FilePatch(self.new_path, self.old_path, hunks)


@dataclass
class Patch:
    name: str
    subject: str
    files: List[FilePatch]
    text: str

    def reversed(self) -> "Patch":
        return Patch(self.name, self.subject, [f.reversed() for f in self.files], "")


def series_files(series_dir: Path = SERIES_DIR) -> List[Path]:
    """The series' patch files, in order."""
    if not Path(series_dir).is_dir():
        raise InputError(f"the series folder {series_dir} does not exist")
    files = sorted(Path(series_dir).glob("*.patch"))
    if not files:
        raise InputError(f"no *.patch files in {series_dir}")
    return files


def _strip_prefix(path: str, name: str) -> Optional[str]:
    if path == "/dev/null":
        return None
    if not path.startswith(("a/", "b/")):
        raise PatchError(f"{name}: path {path!r} lacks the a/ or b/ prefix")
    return check_relative(path[2:], name)


def check_relative(path: str, name: str) -> str:
    """Refuse absolute paths and paths that climb out of the target folder."""
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or not parts:
        raise PatchError(f"{name}: refusing path {path!r} outside the target folder")
    return path


def _subject(lines: List[str]) -> str:
    """The Subject header, unfolded, without git's [PATCH n/m] prefix."""
    for i, line in enumerate(lines):
        if line.startswith("Subject: "):
            parts = [line[9:].strip()]
            for more in lines[i + 1 :]:
                if not more.startswith((" ", "\t")):
                    break
                parts.append(more.strip())
            return re.sub(r"^\[PATCH[^\]]*\]\s*", "", " ".join(parts))
    return ""


def parse_patch(path: Path) -> Patch:
    """Parse one ``git format-patch`` file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the patch {path}: {err}") from None
    lines = text.splitlines(keepends=True)
    subject = _subject(lines)
    files: List[FilePatch] = []
    current: Optional[FilePatch] = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            current = None
        elif (
            line.startswith("--- ")
            and i + 1 < len(lines)
            and lines[i + 1].startswith("+++ ")
        ):
            old = _strip_prefix(line[4:].strip(), path.name)
            new = _strip_prefix(lines[i + 1][4:].strip(), path.name)
            current = FilePatch(old, new)
            files.append(current)
            i += 1
        elif line.startswith("@@ ") and current is not None:
            hunk, i = _read_hunk(lines, i, path.name)
            current.hunks.append(hunk)
            continue
        i += 1
    if not files:
        raise PatchError(f"{path.name}: no file changes found")
    return Patch(path.name, subject, files, text)


def _read_hunk(lines: List[str], i: int, name: str) -> Tuple[Hunk, int]:
    """Read the hunk whose header is lines[i], using its line counts."""
    m = _HUNK.match(lines[i])
    if m is None:
        raise PatchError(f"{name}: malformed hunk header {lines[i].strip()!r}")
    old_left = int(m.group(2) or 1)
    new_left = int(m.group(4) or 1)
    hunk = Hunk(int(m.group(1)), [], [])
    i += 1
    while old_left or new_left:
        if i >= len(lines):
            raise PatchError(f"{name}: hunk at line {hunk.old_start} is cut short")
        line = lines[i] if lines[i] != "\n" else " \n"  # context with stripped space
        tag, body = line[:1], line[1:]
        if tag not in (" ", "-", "+"):
            raise PatchError(f"{name}: unexpected line in hunk: {line.strip()!r}")
        if tag in (" ", "-"):
            hunk.old.append(body)
            hunk.removed += tag == "-"
            old_left -= 1
        if tag in (" ", "+"):
            hunk.new.append(body)
            hunk.added += tag == "+"
            new_left -= 1
        i += 1
    if i < len(lines) and lines[i].startswith("\\"):
        for side in (hunk.old, hunk.new):
            if side and side[-1].endswith("\n"):
                side[-1] = side[-1][:-1]
        i += 1
    return hunk, i


def _apply_hunks(lines: List[str], fp: FilePatch, patch_name: str) -> List[str]:
    out = list(lines)
    shift = 0
    for n, hunk in enumerate(fp.hunks, 1):
        start = (
            max(hunk.old_start - 1, 0) + shift if hunk.old else hunk.old_start + shift
        )
        found = _find(out, hunk.old, start)
        if found is None:
            raise PatchError(
                f"{patch_name}: hunk {n} of {fp.path} does not fit "
                f"(expected near line {hunk.old_start}: {_preview(hunk.old)})"
            )
        out[found : found + len(hunk.old)] = hunk.new
        shift = found - max(hunk.old_start - 1, 0) + len(hunk.new) - len(hunk.old)
    return out


def _find(lines: List[str], block: List[str], start: int) -> Optional[int]:
    if not block:
        return min(start, len(lines))
    for offset in range(0, len(lines) + 1):
        for pos in (start - offset, start + offset):
            if (
                0 <= pos <= len(lines) - len(block)
                and lines[pos : pos + len(block)] == block
            ):
                return pos
    return None


def _preview(block: List[str]) -> str:
    first = next((l.strip() for l in block if l.strip()), "")
    return repr(first[:60])


class Text(str):
    """A text file's content with "\n" line ends; ``crlf``: it had CRLF ones."""

    crlf: bool

    def __new__(cls, body: str, crlf: bool = False) -> "Text":
        text = super().__new__(cls, body)
        text.crlf = crlf
        return text

    def to_bytes(self) -> bytes:
        """The file's bytes, with its own line endings."""
        return (self.replace("\n", "\r\n") if self.crlf else str(self)).encode()


def decode_text(data: bytes, rel: str) -> Text:
    """A file's Text; TreeError if it is not UTF-8 or mixes line endings."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TreeError(f"{rel} is not UTF-8 text ({err.reason} at byte {err.start})")
    if "\r" not in text:
        return Text(text)
    body = text.replace("\r\n", "\n")
    if "\r" in body or body.count("\n") != text.count("\r\n"):
        raise TreeError(
            f"{rel} mixes line endings (CRLF with LF or a bare CR); the series "
            "patches files with one kind of line ending only"
        )
    return Text(body, crlf=True)


Tree = Dict[str, Optional[Text]]  # path -> content, None where the file is absent
Files = Union[Path, Mapping[str, bytes]]  # a folder, or its files' bytes by path


def _read(files: Files, rel: str) -> Optional[bytes]:
    if isinstance(files, Mapping):
        return files.get(rel)
    try:
        return journal.read_file(Path(files), rel)
    except journal.UnsafePath as err:
        raise TreeError(str(err)) from None


def apply_in_memory(
    files: Files, patches: Sequence[Patch], tree: Optional[Tree] = None
) -> Tree:
    """Apply patches to a folder's files (or to given bytes) without touching the disk."""
    tree = dict(tree or {})
    for patch in patches:
        for fp in patch.files:
            for rel in {fp.old_path, fp.new_path} - {None}:
                if rel not in tree:
                    data = _read(files, rel)
                    tree[rel] = None if data is None else decode_text(data, rel)
            if fp.old_path is None:
                if tree.get(fp.new_path) is not None:
                    raise PatchError(f"{patch.name}: {fp.new_path} already exists")
                lines: List[str] = []
                crlf = False
            else:
                content = tree.get(fp.old_path)
                if content is None:
                    raise PatchError(f"{patch.name}: {fp.old_path} is missing")
                lines = content.splitlines(keepends=True)
                crlf = content.crlf
            new_lines = _apply_hunks(lines, fp, patch.name)
            if fp.new_path is None:
                if new_lines:
                    raise PatchError(
                        f"{patch.name}: {fp.old_path} is not as the patch expects"
                    )
                tree[fp.old_path] = None
            else:
                tree[fp.new_path] = Text("".join(new_lines), crlf)
    return tree


def applied_count(files: Files, patches: Sequence[Patch]) -> int:
    """How many leading patches of the series are applied; PatchError if none fits."""
    first_error: Optional[PatchError] = None
    for k in range(len(patches), -1, -1):
        try:
            apply_in_memory(files, [p.reversed() for p in reversed(patches[:k])])
            apply_in_memory(files, patches[k:])
            return k
        except TreeError:
            raise
        except PatchError as err:
            first_error = err if k == 0 else first_error
    raise PatchError(f"the tree matches no state of the series: {first_error}")


def tree_bytes(tree: Tree) -> Dict[str, Optional[bytes]]:
    """The bytes each file of a computed tree holds (None: absent)."""
    return {rel: None if t is None else t.to_bytes() for rel, t in tree.items()}


def write_tree(root: Path, tree: Tree, op: str = "change") -> List[str]:
    """Write a computed tree crash-safely (see journal.py); the files changed."""
    changes = {}
    for rel, new in tree_bytes(tree).items():
        old = _read(Path(root), rel)
        if old != new:
            changes[rel] = (old, new)
    return journal.write_files(Path(root), changes, op)


def recover(root: Path) -> Optional[journal.Recovery]:
    """Finish or undo an apply or revert that was interrupted; None if there was none."""
    return journal.recover(Path(root))


def line_counts(patches: Sequence[Patch]) -> Dict[str, Tuple[int, int]]:
    """Lines (added, removed) per file over the whole series."""
    counts: Dict[str, Tuple[int, int]] = {}
    for patch in patches:
        for fp in patch.files:
            added, removed = counts.get(fp.path, (0, 0))
            added += sum(h.added for h in fp.hunks)
            removed += sum(h.removed for h in fp.hunks)
            counts[fp.path] = (added, removed)
    return counts


def new_files(patches: Sequence[Patch]) -> List[str]:
    """Files the series creates."""
    return [fp.new_path for p in patches for fp in p.files if fp.old_path is None]


def load_series(series_dir: Path = SERIES_DIR) -> List[Patch]:
    return [parse_patch(p) for p in series_files(series_dir)]


def apply_series(root: Path, patches: Sequence[Patch]) -> Tuple[int, List[str]]:
    """Apply the patches not yet applied; returns (how many were applied, files changed)."""
    recover(root)
    k = applied_count(root, patches)
    if k == len(patches):
        return 0, []
    tree = apply_in_memory(root, patches[k:])
    return len(patches) - k, write_tree(root, tree, "apply")


def revert_series(root: Path, patches: Sequence[Patch]) -> Tuple[int, List[str]]:
    """Revert the applied patches; returns (how many were reverted, files changed)."""
    recover(root)
    k = applied_count(root, patches)
    if k == 0:
        return 0, []
    tree = apply_in_memory(root, [p.reversed() for p in reversed(patches[:k])])
    return k, write_tree(root, tree, "revert")
