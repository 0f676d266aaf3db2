"""Scaling laws of associative memories (Cabannes, Dohmatob, Bietti, ICLR 2024; Cabannes, Simsek,
Bietti, ICML 2024), one module per experiment (family "scaling"; `birth scaling NAME`):
d_and_t, heatmap, schemes (the error of W = Σ_x q(x) u_{f*(x)} e_xᵀ against d and T, storage
schemes), sgd, optimizers, optimizer_grid, memory_matrices, learned_embeddings, per_token_q (trained
memories). The science is in birth/memories (schemes, exact errors, fits, theory) and
training/memories.py (the trainer); these modules size the runs, print the numbers and draw.
"""
