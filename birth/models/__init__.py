"""Models: the transformer, one readable part per module (`birth.models.transformer` re-exports them).

- `config`: `ModelConfig` and the presets;
- `reference`: the architecture in plain torch, read top to bottom (what every model computes);
- `bridge`: `build_model`, the seeded TransformerLens bridge that training and the probes use;
- `initialization`: the seeded draws and what trains per variant;
- `weights`: where each weight lives in the bridge;
- `fast`: `fast_logits`, the same function with fewer FLOPs;
- `targets`: the hand-built target memories of the simplified model.
"""
