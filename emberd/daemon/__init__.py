"""The live daemon: device capture, the analysis worker, OSC/ZeroMQ publishers, control.

Thread map
----------
::

    PortAudio callback ─┐  (device.DeviceInput: copy into SampleRing, count, mark arrival)
    or feeder thread  ──┤  (feed.FeederInput: file/synth blocks at real-time or fast pace)
                        ▼
                  SampleRing (SPSC, lock-free)  +  BlockClock (arrival marks)
                        │
                  worker thread (worker.Worker): per channel StreamingFrontEnd ->
                  every hop: encoder (all channels one batch) -> library search ->
                  tag vote, level/onset, similarity -> HopResult
                        │  Handoff per publisher (bounded, drop-oldest, counted)
              ┌─────────┴──────────┐
       OSC publisher thread   ZeroMQ publisher thread
       (publish_osc: one UDP  (publish_zmq: one PUB socket,
        socket, N targets)     wire.encode frames)

       control thread (control.ZmqControlServer, own REP socket)  ─┐
       OSC-in thread  (control.OscControlServer, own UDP socket)  ─┴─> Controller
           -> status/pause/resume directly; set_k/reload/capture/set_model via the
              worker's command queue (applied between hops)

* **callback**: only ``SampleRing.write`` + counters + ``BlockClock.mark``: no
  allocation, logging, locks or Python-heavy work. Everything else is elsewhere.
* **worker**: the only thread touching front ends, the encoder, the library (SQLite
  connections stay in their thread) and per-channel state. It never waits for a
  transport: handoffs drop the oldest hop when a publisher lags.
* **publishers**: each owns its socket(s) (a ZeroMQ socket is used by one thread).
* **control**: own sockets; malformed requests get an error reply and a counter;
  ``capture`` searches the library on the control thread with its own connection.
* **reconnect** (device input only, :mod:`reconnect`): the worker's watchdog notices a
  stalled stream; a reconnect thread restarts capture in a child process whose reader
  thread becomes the ring's only producer.

Shared state between threads is listed in each module's docstring as
"written by -> read by". Modules: :mod:`app` (assembly), :mod:`cli`, :mod:`worker`,
:mod:`engine` (windowed / streaming encoder strategies), :mod:`analysis` (tags,
level, onset, similarity), :mod:`handoff`, :mod:`publish_osc`, :mod:`publish_zmq`,
:mod:`control`, :mod:`status`, :mod:`clock`, :mod:`feed`, :mod:`device`,
:mod:`capture` (PortAudio DeviceSource), :mod:`reconnect`, :mod:`netpolicy`, :mod:`sounds` and
:mod:`demo`.
"""
