"""The architecture of a transformer (`ModelConfig`) and the named presets.

A `ModelConfig` holds the architecture only: the sequence length (n_ctx, the task's T), the
vocabulary and the seed come from the run (`birth.models.bridge.build_model`). Every field is a
command-line flag (`--n-heads 4`); its inline comment is the flag's help text. docs/model.md
describes every option.

Two variants:
- `simplified` (paper, section 4.2): one head per layer, no LayerNorm; only W_K¹, W_K², W_O² and the
  feed-forward layers (W_F) train. W_Q = I, W_V¹, W_O¹ (so W_OV¹ is a fixed random map), W_V², every
  bias and (unless `embeddings` says otherwise) the embeddings and unembedding are frozen.
- `full`: every weight trains (the reference full model: `FULL_MODEL`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Literal

from birth.base.validate import Int, Validated, check_int

Variant = Literal["simplified", "full"]
TrainableInit = Literal["random", "zero"]
Mlp = Literal["none", "relu", "linear"]
MlpLayers = Literal["all", "first", "final"]
Normalization = Literal["none", "pre_ln"]
Embeddings = Literal["auto", "frozen", "trained", "tied"]
Positions = Literal["random", "sinusoidal", "rotary"]
AttnScale = Literal["sqrt_d_head", "none"]

LN_EPS = 1e-5  # the reference full model's LayerNorm epsilon


@dataclass(frozen=True)
class ModelConfig(Validated):
    """The architecture (the sequence length and vocabulary come from the task: `build_model`)."""

    n_layers: Annotated[int, Int(1)] = 2  # attention layers (the simplified variant: 1 or 2)
    d_model: Annotated[int, Int(1)] = 256  # residual width d (d_head = d / n_heads unless --head-width)
    variant: Variant = "simplified"  # simplified: only W_K¹, W_K², W_O² and W_F train, W_Q = I; full: all
    trainable_init: TrainableInit = "random"  # zero: every W_K, the last W_O and each MLP's W_out start at 0
    # token and positional embeddings N(0, 1) per coordinate (norm √d), as nn.Embedding / randn
    # give in the reference code, rather than N(0, 1/d) (norm 1). Scores and gradients then scale
    # with d, which is what its SGD learning rate of 0.03 is tuned for.
    unit_embeddings: bool = False  # w_E, p_t ~ N(0, I) (the reference code's scale) instead of N(0, I/d)
    n_heads: Annotated[int, Int(1)] = 1  # attention heads per layer (the simplified variant: 1)
    head_width: int | None = None  # each head's query/key/value width (default: --d-model / --n-heads)
    mlp: Mlp = "none"  # feed-forward layer: none, ReLU MLP of width --mlp-width x d, or one linear d x d map
    mlp_width: Annotated[int, Int(1)] = 4  # ReLU MLP hidden width in multiples of --d-model (linear: d x d)
    mlp_layers: MlpLayers = "all"  # which layers have the MLP; final: only after the last attention (W_F)
    normalization: Normalization = "none"  # pre_ln: LayerNorm before attention and MLP, and a final one
    # token, positional and output embeddings w_E, p_t, w_U: frozen, trained, or trained and tied
    embeddings: Embeddings = "auto"  # frozen/trained/tied (w_U = w_E); auto: frozen iff simplified
    positions: Positions = "random"  # p_t: N(0, I/d) draws, a fixed sin-cos table, or rotary in attention
    attn_scale: AttnScale = "sqrt_d_head"  # attention scores divided by √d_head, or not scaled
    biases: bool = True  # linear-layer biases (frozen at 0 if simplified); false: none, as the reference

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_width is not None:
            check_int("head_width", self.head_width, 1)
        elif self.d_model % self.n_heads:
            raise ValueError(f"--n-heads must divide --d-model (got {self.n_heads}, {self.d_model})")
        if self.positions == "rotary" and self.d_head % 2:
            raise ValueError(
                f"--positions rotary rotates pairs of coordinates: the head width (--head-width, or "
                f"--d-model / --n-heads) must be even, got {self.d_head}"
            )
        if self.variant == "simplified":
            if self.n_layers not in (1, 2):
                raise ValueError(f"--n-layers must be 1 or 2 for --variant simplified, got {self.n_layers}")
            if self.n_heads != 1:
                raise ValueError(
                    f"--variant simplified has one head per layer: --n-heads must be 1, got {self.n_heads}"
                )
            if self.d_head != self.d_model:
                raise ValueError(
                    f"--variant simplified has W_Q = I: --head-width must be --d-model ({self.d_model}), "
                    f"got {self.head_width}"
                )
            if self.normalization != "none":
                raise ValueError(
                    f"--variant simplified has no LayerNorm: --normalization must be none, "
                    f"got {self.normalization!r}"
                )

    @property
    def d_head(self) -> int:
        """Each head's width: head_width, or d / n_heads."""
        return self.d_model // self.n_heads if self.head_width is None else self.head_width

    @property
    def attention_width(self) -> int:
        """n_heads x d_head: the width of the queries, keys and values of all heads together."""
        return self.n_heads * self.d_head

    @property
    def embedding_mode(self) -> Literal["frozen", "trained", "tied"]:
        """`embeddings` with "auto" resolved: frozen for the simplified variant, trained for full."""
        if self.embeddings == "auto":
            return "frozen" if self.variant == "simplified" else "trained"
        return self.embeddings

    def has_mlp(self, layer: int) -> bool:
        """Whether `layer` (0-based) ends with a feed-forward layer."""
        if self.mlp == "none":
            return False
        if self.mlp_layers == "first":
            return layer == 0
        if self.mlp_layers == "final":
            return layer == self.n_layers - 1
        return True

    @property
    def has_final_ffn(self) -> bool:
        """Whether the last layer has a feed-forward layer W_F (what the W_F probe reads)."""
        return self.has_mlp(self.n_layers - 1)


# The reference full model (`ihead_full_model.py`): 2 layers, 4 heads of width 32, pre-LayerNorm
# and a final LayerNorm, ReLU MLPs of width 4d in both layers, no biases, learned token, positional
# and output embeddings (N(0, 1) embeddings as its nn.Embedding draws). It trains with AdamW
# (lr 0.01, weight decay 0.01, betas (0.9, 0.99)), batch 64, loss on all tokens: the train presets
# hold that side.
FULL_MODEL = ModelConfig(
    n_layers=2,
    d_model=128,
    variant="full",
    n_heads=4,
    mlp="relu",
    mlp_width=4,
    mlp_layers="all",
    normalization="pre_ln",
    embeddings="trained",
    positions="random",
    unit_embeddings=True,
    biases=False,
)

# The simplified model plus a trainable feed-forward layer W_F after the second attention layer
# (the reference's `final_ffn` with `linear_final_ffn`): W_F can store the global bigrams, which the
# attention-only model must otherwise fit into W_O². `mlp="relu"` gives the ReLU version.
SIMPLIFIED_FFN = ModelConfig(mlp="linear", mlp_layers="final")

NAMED_CONFIGS: MappingProxyType[str, ModelConfig] = MappingProxyType(
    {"simplified": ModelConfig(), "simplified-ffn": SIMPLIFIED_FFN, "full": FULL_MODEL}
)
