"""Signal processing: sample and frame ring buffers, audio sources, the streaming mel front end."""
