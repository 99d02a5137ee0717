"""Instrument classes from names and from Hydrogen's drumkit.xml (emberd.library.classes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emberd.library.classes import (
    CLASSES,
    class_of_name,
    class_of_path,
    hydrogen_classes,
    hydrogen_library,
    words_of,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BD_08", "kick"),
        ("kik 3", "kick"),
        ("c3 - bass drum 1", "kick"),
        ("BassDrum", "kick"),
        ("SN_01", "snare"),
        ("jsnare_02", "snare"),  # run-together: j + snare
        ("PearlSnareRimshot-Hard", "snare"),  # snare beats the rimshot articulation
        ("Hand Clap", "clap"),
        ("Fingersnap-Soft", "clap"),
        ("HiHatClosed-3", "closed_hat"),
        ("hhclosed_01", "closed_hat"),
        ("Pedal HH", "closed_hat"),
        ("Hat Ring 1", "closed_hat"),  # a bare hat is a closed hat
        ("Hi-Hat Open (Paiste Alpha Metal edge 14\")", "open_hat"),
        ("Paiste Bell", "cymbal"),  # a ride's bell: the maker hints at a cymbal
        ("Sabian Hat Choke", "closed_hat"),  # the strong word beats the maker
        ("Sabian Hat Semi-Open", "open_hat"),
        ("VariBreaks Hat 1 Op", "open_hat"),
        ("Hard_Hse_OHH_1", "open_hat"),
        ("openhat2", "open_hat"),
        ("floortom_03", "tom"),
        ("Pearl Tom Floor", "tom"),
        ("Ride Bell", "cymbal"),
        ("crash16inch", "cymbal"),
        ("Djembe1 Bass", "percussion"),  # the djembe's bass stroke, not a bass
        ("Cowbell-Med", "percussion"),
        ("Stick", "percussion"),
        ("VariBreaks Kick 1", "kick"),  # a kick from a breaks kit
        ("VariBreaks Drum 2", "percussion"),
        ("Funky Loop 120bpm", "loop"),
        ("Amen Break", "loop"),
        ("Sub Bass C1", "bass"),
        ("Reese bass", "bass"),
        ("Rhodes chord", "keys"),
        ("Warm Pads", "pad"),
        ("Saw Lead 2", "lead"),
        ("Vox chop", "vocal"),
        ("Riser 8 bars", "fx"),
        ("Zap 1", "fx"),
    ],
)
def test_class_of_name(name: str, expected: str) -> None:
    assert class_of_name(name) == expected
    assert expected in CLASSES


@pytest.mark.parametrize(
    "name",
    ["", "19", "take 12", "beats_08-37", "f#4 - ", "Sample: beats_01-39.flac", "atom", "cb_01"],
)
def test_names_that_say_nothing(name: str) -> None:
    assert class_of_name(name) is None


def test_words_of_splits_camel_case_digits_and_joined_words() -> None:
    assert words_of("PearlKick-Softest") == ["pearl", "kick", "softest"]
    assert words_of("HH2_08") == ["hh"]
    assert words_of("closehihat3") == ["close", "hihat"]


def test_class_of_path_reads_file_then_nearest_folder(tmp_path: Path) -> None:
    root = tmp_path / "Kicks Library"  # the library root's own name must not count
    assert class_of_path(root / "Drums" / "Snares" / "snr 01.wav", root) == "snare"
    assert class_of_path(root / "Drums" / "Snares" / "take 3.wav", root) == "snare"
    assert class_of_path(root / "Drums" / "take 3.wav", root) == "percussion"
    assert class_of_path(root / "take 3.wav", root) is None
    assert class_of_path(root / "x" / "take 3.wav") == "kick"  # no root: nearest folders


def _write_kit(kit: Path, xml: str, files: list[str]) -> None:
    kit.mkdir(parents=True)
    (kit / "drumkit.xml").write_text(xml, encoding="utf-8")
    for name in files:
        (kit / name).write_bytes(b"RIFF")


def test_hydrogen_classes_both_layouts_ambiguity_and_missing(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    xml = """<?xml version="1.0"?>
<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
  <name>T</name>
  <instrumentList>
    <instrument><id>0</id><filename>a.wav</filename><name>Kick</name></instrument>
    <instrument><id>1</id><name>Snare Rock</name>
      <layer><filename>b1.wav</filename></layer><layer><filename>b2.wav</filename></layer>
    </instrument>
    <instrument><id>2</id><name>19</name><layer><filename>openhat.wav</filename></layer>
    </instrument>
    <instrument><id>3</id><name>Tom Hi</name><layer><filename>shared.wav</filename></layer>
    </instrument>
    <instrument><id>4</id><name>Crash</name><layer><filename>shared.wav</filename></layer>
    </instrument>
    <instrument><id>5</id><name>Ride</name><layer><filename>gone.wav</filename></layer>
    </instrument>
    <instrument><id>6</id><name>20</name><layer><filename>x.wav</filename></layer>
    </instrument>
    <instrument><id>7</id><name>Pedal HH</name><layer><filename>hihat-semi-open-1.wav</filename>
      </layer><layer><filename>HH_2.wav</filename></layer><layer><filename>fx_chh.wav</filename>
      </layer></instrument>
  </instrumentList>
</drumkit_info>"""
    _write_kit(kit, xml, ["a.wav", "b1.wav", "b2.wav", "openhat.wav", "shared.wav", "x.wav",
                          "hihat-semi-open-1.wav", "HH_2.wav", "fx_chh.wav"])  # fmt: skip
    labels = hydrogen_classes(kit)
    by_name = {p.name: c for p, c in labels.items()}
    assert by_name == {
        "a.wav": "kick",
        "b1.wav": "snare",
        "b2.wav": "snare",
        "openhat.wav": "open_hat",  # instrument "19" says nothing: the file name does
        # the Pedal HH slot plays a recording named semi-open: ambiguous, left out; a bare
        # "HH" agrees with either hat, and "fx chh" names a closed hat among other things
        "HH_2.wav": "closed_hat",
        "fx_chh.wav": "closed_hat",
    }
    assert all(p.is_absolute() for p in labels)


def test_hydrogen_classes_bad_xml_is_empty(tmp_path: Path) -> None:
    _write_kit(tmp_path / "bad", "<drumkit_info><instrument>", [])
    assert hydrogen_classes(tmp_path / "bad") == {}
    assert hydrogen_classes(tmp_path / "absent") == {}
    assert hydrogen_library(tmp_path) == {}


def test_hydrogen_drumkits_labels(drumkit_dir: Path) -> None:
    lib = hydrogen_library(drumkit_dir)
    assert len(lib) >= 10
    flat = {p: c for kit in lib.values() for p, c in kit.items()}
    assert len(flat) >= 500
    assert flat[(drumkit_dir / "BJA_Pacific" / "BD_01.aiff").resolve()] == "kick"
    assert flat[(drumkit_dir / "BJA_Pacific" / "HH2_01.aiff").resolve()] == "open_hat"
    assert flat[(drumkit_dir / "ForzeeStereo" / "HiHatFoot-0.wav").resolve()] == "closed_hat"
    # Audiophob's Kick plays "...tom-0105.wav", Colombo's Pedal HH "hihat-semi-open-1.flac" and
    # its Closed HH "hihat-open-1.flac": the recording's own name disagrees, the label is ambiguous.
    for kit, name in [("Audiophob", "86335__zgump__tom-0105.wav"),
                      ("ColomboAcousticDrumkit", "hihat-semi-open-1.flac"),
                      ("ColomboAcousticDrumkit", "hihat-open-1.flac")]:  # fmt: skip
        assert (drumkit_dir / kit / name).resolve() not in flat
    # "Paiste Bell" is the bell of a ride (a cymbal maker's name), not a percussion bell.
    assert flat[(drumkit_dir / "The Black Pearl 1.0" / "PaisteBell-Hard.wav").resolve()] == "cymbal"
    # A bare hat in the file name agrees with either hat slot; "FX_Chh" names a closed hat too.
    assert flat[(drumkit_dir / "HardElectro1" / "PowR_HH_2.flac").resolve()] == "open_hat"
    assert flat[(drumkit_dir / "HardElectro1" / "FX_Chh_01.flac").resolve()] == "closed_hat"
    seen = set(flat.values())
    assert {"kick", "snare", "clap", "closed_hat", "open_hat", "tom", "cymbal"} <= seen
