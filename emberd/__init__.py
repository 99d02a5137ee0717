"""emberd: a live audio embedding daemon for music producers.

Audio comes in (a device, a file, or a synthetic source), a streaming mel front
end and a small neural encoder turn it into embeddings every hop, and the
nearest sounds of the user's own sample library are published over OSC and
ZeroMQ.
"""

__version__ = "0.1.0"
