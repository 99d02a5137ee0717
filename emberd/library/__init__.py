"""The user's sample library: scanning, indexing, storage, nearest-neighbour search, fingerprints."""
