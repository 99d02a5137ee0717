"""Clients: wire format, typed messages, ZeroMQ/OSC client library, watch, web panel, patches."""
