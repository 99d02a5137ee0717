"""Instrument classes: the vocabulary, the name synonym table, and Hydrogen drum-kit labels.

A producer thinks in *kick, snare, hat, bass, pad*, not in folder names.  This
module turns the words found in file and folder names into one class of
:data:`CLASSES`, and reads Hydrogen's ``drumkit.xml`` files (which name every
instrument of a kit and its sample files) into labelled training data for the
embedding classifier (:mod:`emberd.library.classifier`).

How a name is read (:func:`class_of_name`)
------------------------------------------
1. The text is cut into lower-case words at punctuation, digits and camel-case
   humps (``PearlSnareRimshot`` -> ``pearl snare rimshot``); run-together words
   are split into known words (``hhclosed`` -> ``hh closed``, ``floortom``).
2. Adjacent pairs are joined first (``hi hat`` -> ``hihat``, ``bass drum`` ->
   ``bassdrum``, ``side stick``), then each word is looked up in
   :data:`SYNONYMS`; a plural is tried as its singular.
3. Every word carries a *strength*.  Instrument names (``kick``, ``snare``,
   ``conga``, ``pad``) are strong; words that only hint (``bass`` in
   ``Djembe Bass``, ``rim`` in ``Snare Rimshot``, ``breaks`` in
   ``VariBreaks Kick``) are weak.  The strongest hit wins; among equals, the
   earliest word (the instrument usually comes before its articulation).
   Words loops are filed under (``breaks``, ``groove``) are fainter still; a
   bare ``beats`` says nothing (one-shot packs are called that too).
4. A hat becomes ``open_hat`` or ``closed_hat`` from its qualifier (``open``,
   ``op``, ``semiopen``, ``ohh`` / ``closed``, ``cl``, ``pedal``, ``chh``);
   a bare hat is a closed hat.

:func:`class_of_path` reads the file name first, then each folder from the
nearest outwards, and returns the first class found: ``Drums/Kicks/snr 01.wav``
is a snare.

Short abbreviations that mean different things in different packs (``cb`` is a
cowbell in one and a crash in another, ``bs``, ``oh``, ``808``) are left out on
purpose: a wrong label teaches the classifier more harm than a missing one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

#: The class vocabulary, drums first.  Identifiers are stable (they go on the wire).
CLASSES: tuple[str, ...] = (
    "kick",
    "snare",
    "clap",
    "closed_hat",
    "open_hat",
    "tom",
    "cymbal",
    "percussion",
    "bass",
    "keys",
    "pad",
    "lead",
    "vocal",
    "fx",
    "loop",
)

#: Human labels for displays (panel, terminal monitor).
CLASS_LABELS: dict[str, str] = {c: c.replace("_", " ") for c in CLASSES}

#: The drum-hit classes (one-shots a drum kit is made of).
DRUM_CLASSES: frozenset[str] = frozenset(
    {"kick", "snare", "clap", "closed_hat", "open_hat", "tom", "cymbal", "percussion"}
)

STRONG = 2  # the word names the instrument
WEAK = 1  # the word hints at it (an articulation, a generic word)
FAINT = 0  # a word loops are often filed under, but one-shots too (``VariBreaks Drum``)

_HAT = "<hat>"  # a hat whose open/closed state comes from its qualifier
_OPEN = "<open>"
_CLOSED = "<closed>"

# word -> (class or hat marker, strength).  Lower case, no punctuation.
_TABLE: dict[str, tuple[str, int]] = {}


def _add(cls: str, strength: int, words: str) -> None:
    for word in words.split():
        _TABLE[word] = (cls, strength)


_add("kick", STRONG, "kick kik kck kik bd kd bassdrum kickdrum bombo")
_add("snare", STRONG, "snare snr sn sd snaredrum")
_add("clap", STRONG, "clap clp cp handclap snap fingersnap")
_add(_HAT, STRONG, "hat hh hihat hihats hats hhat")
_add("closed_hat", STRONG, "chh")
_add("open_hat", STRONG, "ohh")
_add(_OPEN, WEAK, "open opened op semiopen semi half")
_add(_CLOSED, WEAK, "closed close cl pedal ped pd foot chick")
_add("tom", STRONG, "tom tm floortom rototom")
_add(
    "cymbal",
    STRONG,
    "cymbal cymbals cym crash crsh ride china splash",
)
_add(
    "percussion",
    STRONG,
    "perc percussion shaker tambourine tamb tambo cowbell clave claves woodblock conga "
    "bongo cajon djembe timbale timbales triangle guiro cabasa maraca maracas agogo tabla "
    "dunun dununba sangban kenkeni whistle sidestick rimclick castanet castanets "
    "waterglass udu darbuka doumbek",
)
_add("percussion", WEAK, "rim rimshot stick click bell drum drums")
# Cymbal makers: a hint, so that "Paiste Bell" is a ride's bell (a cymbal), not a percussion
# bell, while "Sabian Hat Closed" stays a hat (the strong word wins).
_add("cymbal", WEAK, "paiste sabian zildjian meinl")
_add("bass", WEAK, "bass")
_add("bass", STRONG, "subbass bassline sub")
_add(
    "keys",
    STRONG,
    "keys piano pno rhodes epiano organ wurli wurlitzer clav clavinet harpsichord "
    "marimba vibraphone vibes xylophone celesta",
)
_add("pad", STRONG, "pad atmos atmosphere ambient drone texture strings")
_add(
    "lead",
    STRONG,
    "lead synth pluck arp guitar gtr brass horn horns sax trumpet flute",
)
_add("vocal", STRONG, "vocal vocals vox voice voc acapella chant choir adlib singer")
_add(
    "fx",
    STRONG,
    "fx sfx efx effect riser uplifter downlifter sweep impact zap laser whoosh swoosh "
    "noise reverse glitch transition scratch",
)
_add("loop", STRONG, "loop")
_add("loop", FAINT, "break breaks groove")

#: Word pairs read as one word (``hi hat``, ``bass drum``).
_PAIRS: dict[tuple[str, str], str] = {
    ("hi", "hat"): "hihat",
    ("high", "hat"): "hihat",
    ("bass", "drum"): "bassdrum",
    ("kick", "drum"): "kickdrum",
    ("snare", "drum"): "snaredrum",
    ("side", "stick"): "sidestick",
    ("rim", "click"): "rimclick",
    ("floor", "tom"): "floortom",
    ("hand", "clap"): "handclap",
    ("finger", "snap"): "fingersnap",
    ("finger", "snaps"): "fingersnap",
    ("semi", "open"): "semiopen",
    ("sub", "bass"): "subbass",
    ("bass", "line"): "bassline",
}

#: Every word the synonym table knows, for reading and for splitting run-together words.
SYNONYMS: dict[str, str] = {w: c for w, (c, _) in _TABLE.items()}

_MIN_SPLIT_PART = 2  # pieces of a run-together word are at least this long
_MIN_AFTER_LETTER = 4  # "jsnare" is j + snare, but "atom" is not a + tom
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^a-z]+")
_KNOWN_PIECES = frozenset(_TABLE) | {w for pair in _PAIRS for w in pair}


def _split_joined(word: str) -> list[str]:
    """Split a run-together word into known words (``hhclosed`` -> ``hh closed``).

    One unknown leading letter is allowed before a word of four letters or
    more (``jsnare``, ``rsnare``: jazz/rock snare; ``atom`` stays whole).
    A word that cannot be split is returned whole.
    """
    if word in _TABLE or len(word) < 2 * _MIN_SPLIT_PART:
        return [word]
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(end):
            prev = best[start]
            if prev is None:
                continue
            piece = word[start:end]
            known = piece in _KNOWN_PIECES and len(piece) >= _MIN_SPLIT_PART
            lead_letter = start == 0 and end == 1
            if known or lead_letter:
                candidate = [*prev, piece]
                current = best[end]
                if current is None or len(candidate) < len(current):
                    best[end] = candidate
    split = best[n]
    if split is None or (len(split[0]) == 1 and len(split[1]) < _MIN_AFTER_LETTER):
        return [word]
    return [p for p in split if len(p) >= _MIN_SPLIT_PART] or [word]


def words_of(text: str) -> list[str]:
    """Cut a name into lower-case words (camel case, digits and punctuation separate words).

    Parameters
    ----------
    text : str
        A file stem, folder name or instrument name.

    Returns
    -------
    list of str
        The words, run-together ones split into known words.
    """
    spaced = _CAMEL.sub(" ", text)
    out: list[str] = []
    for raw in _NON_WORD.split(spaced.lower()):
        if raw:
            out.extend(_split_joined(raw))
    return out


def _lookup(word: str) -> tuple[str, int] | None:
    hit = _TABLE.get(word)
    if hit is None and len(word) > 3 and word.endswith("s"):
        hit = _TABLE.get(word[:-1])
    return hit


def _words_found(text: str) -> list[tuple[str, int, int]]:
    """``(class, strength, position)`` of every known word of a name, hats resolved.

    A hat word becomes ``open_hat`` or ``closed_hat`` from the first open/closed
    qualifier anywhere in the name; a bare hat stays the hat marker.
    """
    words = words_of(text)
    joined: list[str] = []
    i = 0
    while i < len(words):
        pair = (words[i], words[i + 1]) if i + 1 < len(words) else None
        if pair is not None and pair in _PAIRS:
            joined.append(_PAIRS[pair])
            i += 2
        else:
            joined.append(words[i])
            i += 1
    found: list[tuple[str, int, int]] = []
    hat_state: str | None = None
    for pos, word in enumerate(joined):
        hit = _lookup(word)
        if hit is None:
            continue
        cls, strength = hit
        if cls in (_OPEN, _CLOSED):
            hat_state = hat_state or cls
            continue
        found.append((cls, strength, pos))
    hat = {_OPEN: "open_hat", _CLOSED: "closed_hat", None: _HAT}[hat_state]
    return [(hat if c == _HAT else c, st, pos) for c, st, pos in found]


def _best(text: str) -> tuple[str, int] | None:
    """``(class, strength)`` of a name: the strongest word, the earliest among equals."""
    found = _words_found(text)
    if not found:
        return None
    cls, strength, _pos = min(found, key=lambda f: (-f[1], f[2]))
    return ("closed_hat" if cls == _HAT else cls), strength  # a bare hat is a closed hat


def strong_classes(text: str) -> set[str]:
    """Every class a name names outright (strong words only): ``"FX_Chh_01"`` -> fx, closed hat.

    A hat without an open/closed qualifier names both hat classes.

    Parameters
    ----------
    text : str
        A file stem or an instrument name.

    Returns
    -------
    set of str
        Classes of :data:`CLASSES`; empty when no strong word is found.
    """
    out: set[str] = set()
    for cls, strength, _pos in _words_found(text):
        if strength == STRONG:
            out |= {"closed_hat", "open_hat"} if cls == _HAT else {cls}  # a bare hat: either
    return out


def class_of_name(text: str) -> str | None:
    """The instrument class a name says, or None when it says none.

    Parameters
    ----------
    text : str
        A file stem, a folder name, or a drum-kit instrument name
        (``"Hi-Hat Open (Paiste 14\\")"``, ``"BD_08"``, ``"Djembe1 Bass"``).

    Returns
    -------
    str or None
        One of :data:`CLASSES`, or None.

    Examples
    --------
    >>> class_of_name("PearlSnareRimshot-Hard")
    'snare'
    >>> class_of_name("Sabian Hat Semi-Open")
    'open_hat'
    >>> class_of_name("c3 - bass drum 1")
    'kick'
    >>> class_of_name("take 12") is None
    True
    """
    best = _best(text)
    return None if best is None else best[0]


def class_of_path(path: str | Path, root: str | Path | None = None) -> str | None:
    """The class of a sample from its file name, else its nearest folder that names one.

    Parameters
    ----------
    path : str or Path
        The sample file.
    root : str or Path, optional
        The library folder it was found under; folders above it are not read
        (``/home/me/Drums`` must not make every sample of the library a drum).

    Returns
    -------
    str or None
        One of :data:`CLASSES`, or None when no name says anything.
    """
    p = Path(path)
    names = [p.stem]
    parents = p.parent
    stop = Path(root) if root is not None else None
    while parents != parents.parent and parents != stop:
        names.append(parents.name)
        parents = parents.parent
        if stop is None and len(names) > 3:  # without a root, the nearest three folders only
            break
    for name in names:
        cls = class_of_name(name)
        if cls is not None:
            return cls
    return None


@lru_cache(maxsize=65536)
def cached_class_of_path(path: str, root: str | None = None) -> str | None:
    """:func:`class_of_path`, memoised: match objects ask it for every match of every hop."""
    return class_of_path(path, root)


def _instrument_files(instrument: ET.Element) -> list[str]:
    """Sample file names of one ``<instrument>``: old-style ``<filename>`` and ``<layer>``s."""
    files = [el.text.strip() for el in instrument.iter() if el.tag.endswith("filename") and el.text]
    return [f for f in files if f]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def hydrogen_classes(kit_dir: str | Path) -> dict[Path, str]:
    """The class of every sample of one Hydrogen drum kit, from its ``drumkit.xml``.

    Each ``<instrument>`` names its sound (``"Hi-Hat Closed"``, ``"c3 - bass
    drum 1"``); its class is read from that name, or from the sample's file
    name when the instrument name says nothing (``"19"``).  A sample is left
    out (its label is ambiguous) when two instruments of different classes
    share it, or when its file name names instruments outright and none of
    them is the instrument's class: kits put a recording called ``tom-0105``
    in their Kick slot or ``hihat-semi-open-1`` in their Pedal HH slot, and
    what the recording is matters more to the classifier than the slot it is
    played from.  A sample missing from the folder is left out too.

    Parameters
    ----------
    kit_dir : str or Path
        A kit folder holding ``drumkit.xml`` and the samples.

    Returns
    -------
    dict of Path to str
        Absolute sample path -> class; empty when the kit has no readable
        ``drumkit.xml``.
    """
    kit = Path(kit_dir)
    try:
        tree = ET.parse(kit / "drumkit.xml")
    except (OSError, ET.ParseError):
        return {}
    labels: dict[Path, set[str]] = {}
    for instrument in tree.getroot().iter():
        if _local(instrument.tag) != "instrument":
            continue
        name_el = next((c for c in instrument if _local(c.tag) == "name"), None)
        inst_name = (name_el.text or "").strip() if name_el is not None else ""
        inst_class = class_of_name(inst_name)
        for fname in _instrument_files(instrument):
            cls = inst_class or class_of_name(Path(fname).stem)
            path = (kit / fname).resolve()
            if cls is None or not path.is_file():
                continue
            labels.setdefault(path, set()).add(cls)
            named = strong_classes(Path(fname).stem)
            if inst_class is not None and named and inst_class not in named:
                labels[path] |= named  # the recording says otherwise: ambiguous, left out
    return {p: next(iter(c)) for p, c in sorted(labels.items()) if len(c) == 1}


def hydrogen_library(drumkits_dir: str | Path) -> dict[str, dict[Path, str]]:
    """:func:`hydrogen_classes` for every kit under a drumkits folder, keyed by kit folder name.

    Parameters
    ----------
    drumkits_dir : str or Path
        E.g. ``/usr/share/hydrogen/data/drumkits``.

    Returns
    -------
    dict of str to dict
        Kit folder name -> (sample path -> class); kits without labels are left out.
    """
    root = Path(drumkits_dir)
    out: dict[str, dict[Path, str]] = {}
    kits: Iterable[Path] = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ()
    for kit in kits:
        labels = hydrogen_classes(kit)
        if labels:
            out[kit.name] = labels
    return out
