"""birth: transformers and neural networks seen as associative memories.

The public entry points, importable from `birth` (each loaded on first use: transformer_lens
takes seconds to import)::

    import birth
    config = birth.QUICK.replace(steps=100)          # a frozen, validated training config
    result = birth.train(config, "runs/example")     # train; metrics.jsonl, checkpoints, summary
    model = birth.load_model(result.run_dir)         # the trained TransformerLens model
    birth.all_probes(model)                          # memory-recall probes W_OV2, W_KQ2, W_KQ1

    birth.build_model(birth.ModelConfig(d_model=64), n_ctx=32)   # any architecture, seeded
    birth.run_experiment("layers", out_dir="results/layers")      # any registered experiment
    birth.experiment_names()                                      # what is registered
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"  # the one copy: pyproject.toml reads it (setuptools dynamic version)

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "ModelConfig": ("birth.models.transformer", "ModelConfig"),
    "build_model": ("birth.models.transformer", "build_model"),
    "fast_logits": ("birth.models.transformer", "fast_logits"),
    "fast_cross_entropy": ("birth.models.transformer", "fast_cross_entropy"),
    "supports_fast_path": ("birth.models.transformer", "supports_fast_path"),
    "FULL_MODEL": ("birth.models.transformer", "FULL_MODEL"),
    "SIMPLIFIED_FFN": ("birth.models.transformer", "SIMPLIFIED_FFN"),
    "TaskConfig": ("tasks.triggered_bigram", "TaskConfig"),
    "TriggeredBigram": ("tasks.triggered_bigram", "TriggeredBigram"),
    "load_stats": ("tasks.shakespeare", "load_stats"),
    "TrainConfig": ("training.config", "TrainConfig"),
    "QUICK": ("training.config", "QUICK"),
    "PAPER": ("training.config", "PAPER"),
    "PRESETS": ("training.config", "PRESETS"),
    "train": ("training.trainer", "train"),
    "load_model": ("training.checkpoint", "load_run_model"),
    "all_probes": ("probes.recall", "all_probes"),
    "memory_recall": ("probes.recall", "memory_recall"),
    "evaluate": ("training.evaluation", "evaluate"),
    "run_experiment": ("birth.experiments.registry", "run_experiment"),
    "get_experiment": ("birth.experiments.registry", "get"),
    "experiment_names": ("birth.experiments.registry", "names"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'birth' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
