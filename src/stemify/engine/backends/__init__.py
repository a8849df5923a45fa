"""Inference backends: what runs a batch of normalised segments through a model's network.

The overlap-add, shifts, bag weighting and streaming (``engine.overlap_add``) are the same for
every backend; a backend only turns a ``(batch, channels, samples)`` tensor into the model's
``(batch, sources, channels, samples)`` estimate. ``torch`` runs demucs' own forward pass;
``onnx`` runs the exported network core of HTDemucs models on onnxruntime.
"""
