"""`probe-validity`: ablating the heads a probe names removes the in-context accuracy (issue 24)."""

from __future__ import annotations

import json

from birth.experiments.registry import get, run_experiment


def test_probe_validity_small_ablates_the_simplified_memories(tmp_path):
    exp = get("probe-validity")
    result = run_experiment(exp, exp.small(), tmp_path / "pv", progress=False, log=lambda _: None)
    simplified = result.models["simplified"]
    # the hand-built memories: read at 1, and removing any of them from its head costs accuracy
    assert simplified.icl_acc > 0.8
    for memory in simplified.memories.values():
        assert memory.probe == 1.0 and memory.other_heads == [] and memory.acc_others_ablated is None
        assert memory.acc_named_ablated < simplified.icl_acc - 0.3
    assert simplified.memories["W_OV2"].named_heads == ["l1h0"]
    assert simplified.memories["W_KQ1"].named_heads == ["l0h0"] and simplified.holds()
    full = result.models["full"]  # a few steps of a tiny full model: the heads are named from weights
    assert set(full.memories) == {"W_OV2", "W_KQ2", "W_KQ1"}
    for memory in full.memories.values():
        assert sorted(memory.named_heads + memory.other_heads) == [
            f"l{memory.named_heads[0][1]}h{h}" for h in range(4)
        ]
    saved = json.loads((tmp_path / "pv" / "result.json").read_text())
    assert saved["result"]["models"]["simplified"]["memories"]["W_KQ2"]["probe"] == 1.0
    assert (tmp_path / "pv" / "probe_validity.png").is_file()
