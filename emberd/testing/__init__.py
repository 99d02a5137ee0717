"""Test helpers that ship with emberd: broken-input generators for reliability tests and benches.

Nothing here is imported by the daemon or the library; it exists so tests,
``bench/`` scripts and users reproducing a bug generate the same inputs.
"""
