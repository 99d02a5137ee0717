"""Find the audio files under a set of folders, never crashing on a bad tree.

The walk follows symbolic links (sample packs are often linked in) but visits
each real folder once, so a link loop ends instead of recursing forever.  A
file is a candidate when its extension is one libsndfile reads, or when its
first bytes carry an audio container's magic number (a WAV saved as ``.txt``).
Everything that cannot be examined -- vanished files, broken links, permission
denied, empty files -- is reported as a :class:`Skip` with a reason; files that
are simply not audio (``.xml``, ``.txt``) are ignored silently.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emberd.errors import EmberdError

#: Extensions libsndfile (>= 1.1, with mp3 and opus) decodes.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".aif",
        ".aiff",
        ".aifc",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".caf",
        ".au",
        ".snd",
        ".w64",
        ".rf64",
        ".wv",
        ".voc",
        ".sd2",
        ".mat",
        ".pvf",
        ".xi",
        ".htk",
        ".sds",
        ".avr",
        ".paf",
        ".iff",
        ".svx",
        ".nist",
        ".sph",
    }
)
MAGIC_BYTES = 12  # enough for RIFF/FORM headers: 4-byte id, 4-byte size, 4-byte form type


@dataclass(frozen=True)
class Candidate:
    """A file that looks like audio.

    Attributes
    ----------
    path : str
        Absolute path (symbolic links kept as the user sees them).
    root : str
        The indexed folder it was found under (absolute).
    size : int
        Size in bytes.
    mtime_ns : int
        Modification time in nanoseconds.
    """

    path: str
    root: str
    size: int
    mtime_ns: int

    @property
    def tags(self) -> list[str]:
        """Folder names between the root and the file (``Drums/Kicks`` -> two tags)."""
        rel = os.path.relpath(os.path.dirname(self.path), self.root)
        return [] if rel == "." else [part for part in Path(rel).parts if part not in ("", "..")]


@dataclass(frozen=True)
class Skip:
    """A file or folder left out, with the reason shown in the summary."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """Outcome of :func:`scan`: candidates in a stable order, and the skips."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def sniff_audio(head: bytes) -> bool:
    """Say whether the first bytes of a file look like an audio container libsndfile reads.

    Parameters
    ----------
    head : bytes
        At least the first :data:`MAGIC_BYTES` bytes of the file.

    Returns
    -------
    bool
        True for RIFF/RF64/W64 WAVE, AIFF/AIFC, FLAC, Ogg, CAF, NeXT/Sun, WavPack and MP3.
    """
    if len(head) < 4:
        return False
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC", b"8SVX"):
        return True
    if head[:4] in (b"fLaC", b"OggS", b"caff", b".snd", b"wvpk", b"riff"):
        return True
    if head[:3] == b"ID3":
        return True
    # MPEG audio frame sync: 11 set bits, layer bits not 00.
    return head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0


def _examine(path: str, root: str, result: ScanResult) -> None:
    """Stat and sniff one file; append a Candidate or a Skip (or nothing for non-audio)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "vanished during scan"
        result.skipped.append(Skip(path, reason))
        return
    except PermissionError:
        result.skipped.append(Skip(path, "permission denied"))
        return
    except OSError as exc:
        result.skipped.append(Skip(path, f"cannot stat: {exc.strerror or exc}"))
        return
    if not stat.S_ISREG(st.st_mode):
        return  # sockets, fifos, devices: never audio files, and reading a fifo would block
    has_audio_ext = os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS
    try:
        with open(path, "rb") as fh:
            head = fh.read(MAGIC_BYTES)
    except FileNotFoundError:
        if has_audio_ext:
            result.skipped.append(Skip(path, "vanished during scan"))
        return
    except PermissionError:
        if has_audio_ext:
            result.skipped.append(Skip(path, "permission denied"))
        return
    except OSError as exc:
        if has_audio_ext:
            result.skipped.append(Skip(path, f"cannot read: {exc.strerror or exc}"))
        return
    if not has_audio_ext and not sniff_audio(head):
        return
    if st.st_size == 0:
        result.skipped.append(Skip(path, "empty file (0 bytes)"))
        return
    result.candidates.append(Candidate(path, root, st.st_size, st.st_mtime_ns))


def scan(roots: Sequence[str | os.PathLike[str]]) -> ScanResult:
    """Walk ``roots`` recursively and collect audio candidates.

    Parameters
    ----------
    roots : list of path-like
        Folders (or single files) to scan.

    Returns
    -------
    ScanResult
        Candidates sorted by path (a file reachable twice is listed once) and
        skips with reasons.

    Raises
    ------
    EmberdError
        If a root does not exist or is not a folder or file.
    """
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for raw in roots:
        root = os.path.abspath(os.fspath(raw))
        if not os.path.exists(root):
            raise EmberdError(f"{raw}: no such folder")
        if os.path.isfile(root):
            _examine(root, os.path.dirname(root), result)
            continue
        if not os.path.isdir(root):
            raise EmberdError(f"{raw}: not a folder or a file")
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                result.skipped.append(Skip(folder, f"cannot open folder: {exc.strerror or exc}"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                if os.path.islink(folder):
                    result.skipped.append(
                        Skip(folder, "symbolic link loop (folder already scanned)")
                    )
                continue
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except PermissionError:
                result.skipped.append(Skip(folder, "permission denied (folder)"))
                continue
            except OSError as exc:
                result.skipped.append(Skip(folder, f"cannot list folder: {exc.strerror or exc}"))
                continue
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # hidden files, macOS '._x.wav' resource forks, .git
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_dir:
                    subdirs.append(entry.path)
                elif entry.path not in seen_files:
                    seen_files.add(entry.path)
                    _examine(entry.path, root, result)
            stack.extend(reversed(subdirs))
    result.candidates.sort(key=lambda c: c.path)
    return result
