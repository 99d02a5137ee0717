"""The live daemon: device capture, the analysis worker, sinks (OSC/ZeroMQ/plug-ins), control.

Thread map
----------
::

    capture child process: PortAudio callback -> framed blocks on a pipe (capture_child)
      -> capture reader thread ─┐  (reconnect.InputWatchdog: DeviceSource.deliver at the
                                │   child's callback times; --capture-in process)
    or PortAudio callback ──────┤  (default: dsp.device.DeviceSource in-process)
    or feeder thread  ──────────┤  (feed.FeederInput: file/synth blocks at real-time or fast pace)
                                ▼
                  SampleRing (SPSC, lock-free)  +  BlockClock (arrival marks)
                                │
                  worker thread (worker.Worker): every drained block -> hit ladder
                  (hits.HitLadder: onset per channel, provisional/refined/final
                  answers handed over at once); per channel StreamingFrontEnd ->
                  every hop: encoder (all channels one batch) -> library search ->
                  level/onset -> HopResult -> outputs.Outputs: analysers (tags,
                  similarity, plug-ins) add fields, messages built once
                  encoder thread (engine.StreamingHopEncoder, live streaming aiSFX):
                  runs the encoder's steps on the mel frames the worker hands it; the
                  worker publishes every hop with the newest finished embedding
                        │  Handoff per sink (bounded, drop-oldest, counted in messages)
              ┌─────────┼──────────────────┬─────────────────┐
       sink thread: osc   sink thread: zmq    sink thread: midi   sink thread per --sink
       (publish_osc: one  (publish_zmq: own   (publish_midi)      (third-party emberd.sinks
        UDP socket)        context + PUB)                          plug-in)

       control thread (control.ZmqControlServer, own REP socket)  ─┐
       OSC-in thread  (control.OscControlServer, own UDP socket)  ─┴─> Controller
           -> status/pause/resume directly; set_k/reload/capture/set_model via the
              worker's command queue (applied between hops)

* **callback**: in the capture child (:mod:`capture_child`), the only busy thread of its
  process, so no daemon thread can make it wait for a GIL: one message copy and one
  non-blocking pipe write (a full pipe drops the block, counted). In-process
  (``--capture-in thread``): only ``SampleRing.write`` + counters + ``BlockClock.mark``.
  No allocation, logging, locks or Python-heavy work either way.
* **capture reader** (``emberd-capture-read``): the ring's producer when capture runs in a
  child; not real-time (the pipe holds about 6 s of one channel while it is late).
* **worker**: the only thread touching front ends, the library (SQLite connections
  stay in their thread) and per-channel state. It never waits for a transport: handoffs
  drop the oldest hop when a publisher lags; nor, live, for a streaming encoder step.
* **encoder** (live streaming aiSFX only, ``emberd-encoder``): the only thread running
  the streaming network while it exists; gets copies of mel frames from the worker
  (:class:`~engine.StepJob`), never reads the front ends. The worker stops it at the
  end of input and steps the flush itself.
* **sinks** (:mod:`outputs`): every output is an ``emberd.sinks`` entry point constructed
  and run on its own thread; each owns its socket(s) (a ZeroMQ socket is used by one
  thread); exceptions are counted per sink and a sink failing in a row is disabled.
* **control**: own sockets; malformed requests get an error reply and a counter;
  ``capture`` searches the library on the control thread with its own connection.
* **reconnect** (device input only, :mod:`reconnect`): the reconnect thread watches the
  capture child and replaces one that stalls or dies (with backoff); with in-process
  capture the worker's watchdog notices a stalled stream and capture continues in a
  child the same way.

Shared state between threads is listed in each module's docstring as
"written by -> read by". Modules: :mod:`app` (assembly), :mod:`cli`, :mod:`worker`,
:mod:`engine` (windowed / streaming encoder strategies), :mod:`hits` (live hits: the
decision ladder and the window-match level gate), :mod:`analysis` (tags,
level, onset, similarity), :mod:`analyzers`, :mod:`outputs`, :mod:`handoff`,
:mod:`publish_osc`, :mod:`publish_zmq`, :mod:`publish_midi`,
:mod:`control`, :mod:`status`, :mod:`feed`, :mod:`device` (the dsp layer's
DeviceSource plus the stall watchdog), :mod:`reconnect`, :mod:`capture_child` (the
capture child process), :mod:`netpolicy`, :mod:`sounds` and :mod:`demo`.
"""
