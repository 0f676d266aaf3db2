"""The transformers of *Birth of a Transformer*: the names the rest of the project imports.

`birth.models` in parts, each readable alone:

- `config`: `ModelConfig` (the architecture, one flag per field) and the presets `FULL_MODEL`,
  `SIMPLIFIED_FFN`, `NAMED_CONFIGS`;
- `reference`: the architecture written out in plain torch, read top to bottom: what every model
  computes (`ReferenceTransformer`, `reference_logits`);
- `bridge`: `build_model`, the seeded TransformerLens 4.x `TransformerBridge` the project trains and
  probes (fused attention and LayerNorm kernels where no hook reads their insides);
- `initialization`: the seeded draws and which weights train per variant;
- `weights`: where each weight lives in the bridge (`attn_linear`, `mlp_linear`, `layer_norm`, ...);
- `fast`: `fast_logits`, the same function with fewer FLOPs for the architectures
  `supports_fast_path` accepts, `fast_cross_entropy` (the training loss through it) and
  `fast_logits_and_patterns` (evaluation).

`tests/unit/test_model.py` holds the bridge and the fast path equal to the reference, values and
gradients. docs/model.md describes every option.
"""

from __future__ import annotations

from birth.models.bridge import build_model
from birth.models.config import (
    FULL_MODEL,
    LN_EPS,
    NAMED_CONFIGS,
    SIMPLIFIED_FFN,
    AttnScale,
    Embeddings,
    Mlp,
    MlpLayers,
    ModelConfig,
    Normalization,
    Positions,
    TrainableInit,
    Variant,
)
from birth.models.fast import (
    fast_cross_entropy,
    fast_logits,
    fast_logits_and_patterns,
    fast_path_obstacle,
    supports_fast_path,
)
from birth.models.initialization import initialize, sinusoidal_positions, trainable_matrices
from birth.models.reference import ReferenceTransformer, reference_logits
from birth.models.weights import (
    apply_mlp,
    attn_linear,
    layer_norm,
    mlp_linear,
    model_config,
    native,
    trainable_parameters,
)

__all__ = [
    "FULL_MODEL",
    "LN_EPS",
    "NAMED_CONFIGS",
    "SIMPLIFIED_FFN",
    "AttnScale",
    "Embeddings",
    "Mlp",
    "MlpLayers",
    "ModelConfig",
    "Normalization",
    "Positions",
    "ReferenceTransformer",
    "TrainableInit",
    "Variant",
    "apply_mlp",
    "attn_linear",
    "build_model",
    "fast_cross_entropy",
    "fast_logits",
    "fast_logits_and_patterns",
    "fast_path_obstacle",
    "initialize",
    "layer_norm",
    "mlp_linear",
    "model_config",
    "native",
    "reference_logits",
    "sinusoidal_positions",
    "supports_fast_path",
    "trainable_matrices",
    "trainable_parameters",
]
