"""Clients: wire format and typed messages, ZeroMQ/OSC client library, watch CLI, web panel, patches."""
