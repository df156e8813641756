"""Span sources inside the inference process: the instrument step, wrapping the
runtime (PyTorch, ONNX Runtime, LiteRT) so each call becomes a span for the emitter.
The shared base holds the never-block, never-raise rules so each runtime module is
only the part that differs."""
