"""The training experiments of *Birth of a Transformer*, one module per experiment.

The claims (layers, triggers, order, loss, ood), the studies beyond them (joint, n-triggers,
trigger-frequency, held-out-outputs, order-readings) and the full transformer's headline
(global-vs-icl, global-vs-icl-ffn, layers-full). Each trains the model on the triggered-bigram task
from a base training config (a CPU-sized preset by default; `full()` the paper's sizes, for a GPU)
with one field changed per arm, keeps every run under `out_dir/runs/` (a normal run directory:
`birth inspect` and `birth plot` read it) and reports the held-out metrics and memory-recall probes
the training loop records. Shared pieces: `common`.
"""
