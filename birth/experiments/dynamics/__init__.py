"""Gradient dynamics of associative memories (*Learning Associative Memories with Gradient Descent*,
Cabannes, Simsek, Bietti, ICML 2024; the talks *Associative Memory with Heavy-Tailed Data*, Bietti,
Cabannes et al., and *Transformers and Associative Memories*, Bietti), one module per experiment (family
"dynamics"; `birth dynamics NAME`): margins, spikes, landscape, sharpness, forgetting,
phase_diagram, underparameterized, transformer_wo2. The problems and their closed forms are in
birth/memories (problem, dynamics), the trainer in training/memories.py; these modules size the runs,
print the numbers and draw.
"""
