"""The theory of *Birth of a Transformer*, one module per experiment: memories, gradient-steps,
three-steps, lemma, noisy-lemma (and toy, a tiny seeded computation that exercises `birth grid`).

They use the setting of the paper's constructions, not a training preset: the TrainConfig defaults
(K=5 fixed triggers, N(0, I/d) embeddings, loss on the outputs) at each experiment's sizes, and take
seconds to minutes on a CPU. The gradient-step procedure is in `steps` (the theorem's own setting
in `theorem`), the hand-built memories in `birth.models.targets`.
"""
