"""MIDI out: the built-in ``midi`` sink, one note per hit (``emberd run --midi PORT``).

Registered as ``emberd.sinks: midi`` and run like every sink by
:mod:`emberd.daemon.outputs`. It reads the ``hit.<c>`` messages and, for the first
message of each hit at the triggering stage (``provisional`` by default, so the note
leaves as soon as emberd has an answer; ``refined`` or ``final`` trade speed for
certainty), sends a note-on and, :data:`NOTE_MS` later, its note-off:

* **note**: from the top match, looked up in order by its file path, its file name,
  each folder tag (nearest first) and its instrument class
  (:func:`emberd.library.classes.class_of_path`), in the ``--midi-map`` JSON file and
  then in :data:`GM_DRUM_NOTES` (General MIDI drum notes: kick 36, snare 38, closed hat
  42 ...). A hit answered ``none`` or with no mapped note sends nothing (counted in
  ``unmapped``).
* **velocity**: the hit's ``peak_db`` mapped linearly from :data:`VELOCITY_FLOOR_DB`
  (velocity 1) to 0 dBFS (127).

Backends: JACK MIDI (the JACK-Client package; ``PORT`` is the JACK input port to connect
to, e.g. ``system:midi_playback_1``, or ``-`` to only register ``emberd-midi:out``) and the
ALSA sequencer (``PORT`` = ``alsa:CLIENT:PORT``; needs the ``alsa-midi`` package and
``/dev/snd/seq``). Map file::

    {"channel": 10, "note_ms": 100, "notes": {"kick": 36, "Snares": 40,
     "Kick 01.wav": 35, "/abs/path/to/crash.wav": 57}}

Threads: ``publish`` runs on the sink thread and only appends to a deque; the JACK
process callback (JACK's thread) pops it and writes the events into the port buffer.

Shared attributes (written by -> read by): ``_queue`` deque of ``(status, note, velocity)``
(sink thread appends -> JACK thread pops; deque operations are atomic); ``sent``,
``unmapped``, ``dropped`` (sink thread -> its runner / status).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from emberd.errors import EmberdError

log = logging.getLogger(__name__)

STAGES = ("provisional", "refined", "final")
DEFAULT_STAGE = "provisional"
DEFAULT_CHANNEL = 10  # General MIDI drums (1-based, as users name channels)
NOTE_MS = 100.0  # note-on to note-off
VELOCITY_FLOOR_DB = -40.0  # peak level that maps to velocity 1; 0 dBFS maps to 127
QUEUE_MAX_EVENTS = 256  # notes waiting for the JACK thread; older ones are dropped (counted)
NOTE_ON, NOTE_OFF = 0x90, 0x80
CONNECT_SETTLE_CYCLES = 3  # JACK cycles to wait after connecting the port
CONNECT_SETTLE_TIMEOUT_S = 1.0

#: General MIDI percussion key map, by instrument class (emberd.library.classes) and by
#: common folder names. Keys are matched case-insensitively.
GM_DRUM_NOTES: dict[str, int] = {
    "kick": 36, "kicks": 36, "bassdrum": 36, "bd": 36,
    "snare": 38, "snares": 38, "sd": 38,
    "clap": 39, "claps": 39,
    "closed_hat": 42, "closedhat": 42, "hihat": 42, "hihats": 42, "hats": 42, "hat": 42,
    "open_hat": 46, "openhat": 46,
    "tom": 45, "toms": 45,
    "cymbal": 49, "cymbals": 49, "crash": 49, "ride": 51,
    "percussion": 60, "perc": 60,
    "cowbell": 56, "rim": 37, "rimshot": 37, "shaker": 70, "tambourine": 54,
}  # fmt: skip


def velocity(peak_db: float, floor_db: float = VELOCITY_FLOOR_DB) -> int:
    """MIDI velocity 1..127 for a peak level in dBFS (linear in dB above ``floor_db``)."""
    if not np.isfinite(peak_db):
        return 1
    return int(np.clip(round(1 + 126 * (peak_db - floor_db) / -floor_db), 1, 127))


class NoteMap:
    """Match -> MIDI note (see the module docstring for the lookup order)."""

    def __init__(self, notes: dict[str, int] | None = None) -> None:
        self.user = {k.lower(): int(v) for k, v in (notes or {}).items()}
        self.paths = {k: int(v) for k, v in (notes or {}).items() if k.startswith("/")}
        for key, note in [*self.user.items()]:
            if not 0 <= note <= 127:
                raise EmberdError(f"--midi-map: note {note} for {key!r} is not in 0..127")

    def note_for(self, match: dict[str, Any]) -> int | None:
        path = str(match.get("path", ""))
        name = Path(path).name
        tags = [str(t) for t in reversed(match.get("tags") or [])]  # nearest folder first
        keys = [name, Path(path).stem, *tags]
        cls = match.get("class") or _class_of(path)
        if path in self.paths:
            return self.paths[path]
        for key in [*keys, cls]:
            if key and key.lower() in self.user:
                return self.user[key.lower()]
        for key in [*tags, cls]:
            if key and key.lower() in GM_DRUM_NOTES:
                return GM_DRUM_NOTES[key.lower()]
        return None


def _class_of(path: str) -> str | None:
    from emberd.library.classes import class_of_path

    return class_of_path(path) if path else None


def load_map(path: str | None) -> tuple[NoteMap, dict[str, Any]]:
    """Read a ``--midi-map`` JSON file: ``(NoteMap, other settings)``."""
    if not path:
        return NoteMap(), {}
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmberdError(f"--midi-map {path}: cannot read ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("notes", {}), dict):
        raise EmberdError(f"--midi-map {path}: expected {{\"notes\": {{NAME: NOTE, ...}}}}")
    return NoteMap(data.get("notes", {})), {k: v for k, v in data.items() if k != "notes"}


class JackMidiOut:
    """A JACK client ``emberd-midi`` with one MIDI output port, connected to ``port``."""

    def __init__(self, port: str | None, *, note_ms: float, client_name: str = "emberd-midi"):
        try:
            import jack
        except (ImportError, OSError) as exc:
            raise EmberdError(f"--midi: JACK MIDI needs the JACK-Client package ({exc})") from exc
        try:
            self.client = jack.Client(client_name, no_start_server=True)
        except jack.JackError as exc:
            raise EmberdError(f"--midi: no JACK server to connect to ({exc})") from exc
        self.out = self.client.midi_outports.register("out")
        self.queue: collections.deque[tuple[int, int, int]] = collections.deque()
        self._offs: list[tuple[int, bytes]] = []  # (due frame, note-off): JACK thread only
        self._note_frames = max(1, round(note_ms / 1000.0 * self.client.samplerate))
        self.cycles = 0  # process cycles run (JACK thread -> constructor)
        self.client.set_process_callback(self._process)
        self.client.activate()
        if port:
            try:
                self.client.connect(self.out, port)
            except jack.JackError as exc:
                self.client.deactivate()
                self.client.close()
                raise EmberdError(f"--midi {port}: cannot connect ({exc})") from exc
            # JACK applies a new connection from a later cycle on: a note written before
            # that would be lost, so the sink is ready only once the graph has run with it.
            first = self.cycles
            deadline = time.monotonic() + CONNECT_SETTLE_TIMEOUT_S
            while self.cycles < first + CONNECT_SETTLE_CYCLES and time.monotonic() < deadline:
                time.sleep(0.001)

    def send(self, status: int, note: int, vel: int) -> None:
        self.queue.append((status, note, vel))

    def _process(self, frames: int) -> None:
        # JACK's thread: write this cycle's events in time order, note-offs when due.
        self.cycles += 1
        self.out.clear_buffer()
        start = self.client.last_frame_time
        events: list[tuple[int, bytes]] = []
        while self.queue:
            status, note, vel = self.queue.popleft()
            events.append((0, bytes((status, note, vel))))
            self._offs.append((start + self._note_frames,
                               bytes((NOTE_OFF | (status & 0x0F), note, 0))))  # fmt: skip
        due = [(f, m) for f, m in self._offs if f < start + frames]
        if due:
            self._offs = [(f, m) for f, m in self._offs if f >= start + frames]
            events += [(max(0, f - start), m) for f, m in due]
        for offset, msg in sorted(events, key=lambda e: e[0]):
            self.out.write_midi_event(offset, msg)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class AlsaMidiOut:
    """An ALSA sequencer client ``emberd-midi`` whose output port is connected to
    ``CLIENT:PORT`` (numbers, or a client name). Note-offs are sent from the sink thread
    after :data:`NOTE_MS` by a timer on the same thread (see :meth:`tick`)."""

    def __init__(self, address: str, *, note_ms: float) -> None:
        if not Path("/dev/snd/seq").exists():
            raise EmberdError("--midi alsa:...: this machine has no ALSA sequencer (/dev/snd/seq)")
        try:
            import alsa_midi
        except ImportError as exc:
            raise EmberdError("--midi alsa:...: needs the alsa-midi package "
                              "(pip install 'emberd[alsa]')") from exc  # fmt: skip
        self.alsa = alsa_midi
        self.client = alsa_midi.SequencerClient("emberd-midi")
        self.port = self.client.create_port("out", caps=alsa_midi.READ_PORT)
        target_client, _, target_port = address.partition(":")
        try:
            dest = (int(target_client), int(target_port or 0))
        except ValueError:
            found = [p for p in self.client.list_ports(output=True)
                     if p.client_name == target_client]  # fmt: skip
            if not found:
                raise EmberdError(f"--midi alsa:{address}: no such ALSA client") from None
            dest = (found[0].client_id, found[0].port_id)
        self.port.connect_to(dest)
        self.note_s = note_ms / 1000.0
        self._offs: list[tuple[float, int, int]] = []

    def send(self, status: int, note: int, vel: int) -> None:
        ch = status & 0x0F
        self.client.event_output(self.alsa.NoteOnEvent(note=note, velocity=vel, channel=ch),
                                 port=self.port)  # fmt: skip
        self.client.drain_output()
        self._offs.append((time.monotonic() + self.note_s, note, ch))
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        for _, note, ch in [o for o in self._offs if o[0] <= now]:
            self.client.event_output(self.alsa.NoteOffEvent(note=note, velocity=0, channel=ch),
                                     port=self.port)  # fmt: skip
        self._offs = [o for o in self._offs if o[0] > now]
        self.client.drain_output()

    def close(self) -> None:
        for _, note, ch in self._offs:
            self.client.event_output(self.alsa.NoteOffEvent(note=note, velocity=0, channel=ch),
                                     port=self.port)  # fmt: skip
        self.client.drain_output()
        self.client.close()


class MidiSink:
    """Turns hit messages into notes (see module docstring)."""

    def __init__(self, out: Any, notes: NoteMap, *, stage: str, channel: int,
                 floor_db: float = VELOCITY_FLOOR_DB) -> None:  # fmt: skip
        self.out = out
        self.notes = notes
        self.stage = stage
        self.channel = channel
        self.floor_db = floor_db
        self.sent = 0
        self.unmapped = 0
        self.dropped = 0  # notes the JACK thread never took (a stalled JACK server)
        self._last_hit: dict[int, int] = {}  # channel -> newest hit id that sent its note

    def publish(self, topic: str, header: dict[str, Any], array: np.ndarray | None) -> None:
        if header.get("kind") != "hit":
            tick = getattr(self.out, "tick", None)
            if tick is not None:
                tick()  # ALSA: note-offs fall due between hits too
            return
        if header.get("stage") != self.stage:
            return
        chan, hit = int(header.get("channel", 0)), int(header["hit"])
        if self._last_hit.get(chan, -1) >= hit:
            return  # refined comes twice per hit: one note per hit
        self._last_hit[chan] = hit
        matches = header.get("matches") or []
        note = self.notes.note_for(matches[0]) if matches else None
        if note is None:
            self.unmapped += 1
            return
        queue = getattr(self.out, "queue", None)
        if queue is not None and len(queue) >= QUEUE_MAX_EVENTS:
            queue.popleft()
            self.dropped += 1
        self.out.send(NOTE_ON | (self.channel - 1), note,
                      velocity(float(header.get("peak_db", -120.0)), self.floor_db))  # fmt: skip
        self.sent += 1

    def counters(self) -> dict[str, int]:
        """``outputs.midi.counters`` in status."""
        return {"notes": self.sent, "unmapped": self.unmapped}

    def close(self) -> None:
        self.out.close()


def factory(options: dict[str, str]) -> MidiSink:
    """Entry point ``emberd.sinks: midi``. Options: ``port`` (JACK port, ``alsa:C:P``, or
    ``-``), ``map`` (JSON file), ``stage``, ``channel`` (1-16), ``note_ms``, ``floor_db``."""
    notes, settings = load_map(options.get("map"))
    stage = options.get("stage") or str(settings.get("stage", DEFAULT_STAGE))
    if stage not in STAGES:
        raise EmberdError(f"--midi-stage {stage!r}: choose from {', '.join(STAGES)}")
    channel = int(options.get("channel") or settings.get("channel", DEFAULT_CHANNEL))
    if not 1 <= channel <= 16:
        raise EmberdError(f"MIDI channel {channel}: must be in 1..16")
    note_ms = float(options.get("note_ms") or settings.get("note_ms", NOTE_MS))
    port = options.get("port", "-")
    out: Any
    if port.startswith("alsa:"):
        out = AlsaMidiOut(port[len("alsa:"):], note_ms=note_ms)
    else:
        out = JackMidiOut(None if port in ("", "-") else port, note_ms=note_ms)
    floor = float(options.get("floor_db") or settings.get("floor_db", VELOCITY_FLOOR_DB))
    return MidiSink(out, notes, stage=stage, channel=channel, floor_db=floor)
