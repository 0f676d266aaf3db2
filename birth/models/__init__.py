"""Models: the transformer (TransformerLens bridge, fast path, reference architecture)."""
