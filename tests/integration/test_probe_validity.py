"""`probe-validity`: ablating the heads a probe names removes the in-context accuracy (issue 24)."""

from __future__ import annotations

import json

import torch

from birth.experiments.registry import get, run_experiment
from birth.experiments.transformer.probe_validity import memory_keys, remove_keys


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
    assert simplified.first_layer_attention["previous_token"][0] > 0.9
    # random triggers (W_KQ2 over every token, weighted by the in-context targets): the same holds
    simplified_random = result.models["simplified-random"]
    assert simplified_random.icl_acc > 0.6 and simplified_random.holds()
    for memory in simplified_random.memories.values():
        assert memory.probe == 1.0 and memory.acc_named_ablated < simplified_random.icl_acc - 0.25
    # removing the memory's keys from the named head is (nearly) removing the head: it is all it does
    kq1 = simplified_random.memories["W_KQ1"]
    assert abs(kq1.acc_named_ablated - kq1.acc_named_heads_removed) < 0.05
    full_random = result.models["full-random"]  # untrained at this size: only the reading's shape
    assert set(full_random.memories) == {"W_OV2", "W_KQ2", "W_KQ1"}
    assert len(full_random.first_layer_attention["own_token"]) == 4
    saved = json.loads((tmp_path / "pv" / "result.json").read_text())
    assert saved["result"]["models"]["simplified"]["memories"]["W_KQ2"]["probe"] == 1.0
    assert (tmp_path / "pv" / "probe_validity.png").is_file()


def test_remove_keys_takes_only_the_memorys_attention_away():
    tokens = torch.tensor([[3, 1, 3, 2, 1]])
    T = tokens.shape[1]
    previous = memory_keys("previous_token", tokens)[0]
    assert previous.nonzero().tolist() == [[t, t - 1] for t in range(1, T)]
    induction = memory_keys("induction", tokens)[0]  # query 2 (token 3) -> key 1, query 4 (token 1) -> key 2
    assert induction.nonzero().tolist() == [[2, 1], [4, 2]]
    causal = torch.ones(T, T).tril()
    on_previous = torch.eye(T).roll(-1, dims=1).tril()  # every query on t - 1 (query 0 on itself)
    on_previous[0, 0] = 1.0
    pattern = torch.stack([on_previous, causal / causal.sum(-1, keepdim=True)]).unsqueeze(0)  # [1, 2, T, T]
    out = remove_keys(pattern, [0, 1], previous.unsqueeze(0))
    assert torch.allclose(out.sum(-1), torch.ones(1, 2, T))
    # a pure previous-token head becomes uniform (query 0 has no t - 1: kept on itself)
    assert torch.allclose(out[0, 0, 1:], (causal / causal.sum(-1, keepdim=True))[1:])
    assert torch.equal(out[0, 0, 0], pattern[0, 0, 0])
    # a uniform head keeps its other attention and gets the 1/(t+1) it had on t - 1 spread evenly
    for t in range(1, T):
        share = 1.0 / (t + 1)
        expected = torch.full((t + 1,), share + share * share)
        expected[t - 1] = share * share
        assert torch.allclose(out[0, 1, t, : t + 1], expected)
    untouched = remove_keys(pattern, [1], previous.unsqueeze(0))
    assert torch.equal(untouched[0, 0], pattern[0, 0])
