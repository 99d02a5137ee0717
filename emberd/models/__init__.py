"""Encoders: manifests and registry, the ONNX Runtime path, converters (aiSFX, DSP baseline)."""
