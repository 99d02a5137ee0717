"""The live daemon: device capture, the analysis worker, OSC/ZeroMQ publishers, control."""
