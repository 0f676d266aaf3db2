"""The full transformer's presets, training through the TransformerLens forward, the bigram floor,
the global-vs-icl / layers-full experiments and `birth inspect` per head."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from birth.base.curves import mean_std
from birth.cli import main as cli_main
from birth.experiments.registry import get, names, run_experiment
from birth.models.transformer import FULL_MODEL, supports_fast_path
from probes.attention import (
    find_heads,
    head_scores,
    previous_token_targets,
    trigger_induction_targets,
    typical_sequence,
)
from probes.recall import FF_PROBE, ff_bigram_kl
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch, TriggeredBigram, bigram_floor, occurrence_counter
from training.checkpoint import load_run_model
from training.config import PRESETS
from training.logger import read_metrics
from training.trainer import train

EXPERIMENTS = ("global-vs-icl", "global-vs-icl-ffn", "layers-full")


def _quiet(*_args) -> None:
    pass


# --- presets -------------------------------------------------------------------------------------


def test_full_and_simplified_ffn_presets_are_valid_frozen_and_the_reference_settings():
    full, ffn = PRESETS["full"], PRESETS["simplified-ffn"]
    for preset in (full, ffn):
        preset.validate(65)
        with pytest.raises(dataclasses.FrozenInstanceError):
            preset.optim.lr = 1.0
    m, o = full.model, full.optim
    # the reference full model's architecture (only its width may be CPU-sized) and optimizer
    assert dataclasses.replace(m, d_model=FULL_MODEL.d_model) == FULL_MODEL
    assert (m.n_layers, m.n_heads, m.normalization, m.mlp, m.mlp_width, m.embedding_mode) == (
        2,
        4,
        "pre_ln",
        "relu",
        4,
        "trained",
    )
    assert (o.optimizer, o.lr, o.weight_decay, o.betas, o.batch_size, o.loss_on) == (
        "adamw",
        0.01,
        0.01,
        (0.9, 0.99),
        64,
        "all",
    )
    assert not supports_fast_path(m)  # it trains through the TransformerLens forward
    # simplified-ffn: the quick preset's simplified model with a trainable final W_F, all tokens
    quick = PRESETS["quick"]
    assert ffn.model.variant == "simplified" and ffn.model.has_final_ffn and ffn.model.mlp == "linear"
    assert ffn.optim.loss_on == "all" and supports_fast_path(ffn.model)
    assert ffn.replace(mlp="none", mlp_layers="all", loss_on="outputs", trigger_mode="random") == quick


# --- training through the TransformerLens forward -------------------------------------------------


def test_a_tiny_full_model_trains_through_the_transformer_lens_forward(tmp_path, one_thread):
    # fast_path stays on: the loop must fall back to model(tokens) for a model it cannot run
    config = PRESETS["full"].replace(
        d_model=16, seq_len=16, batch_size=16, steps=30, eval_every=10, eval_batch_size=32,
        checkpoint_every=30, lr=0.03)  # fmt: skip
    assert config.run.fast_path
    result = train(config, tmp_path / "run", device="cpu", progress=False, log=_quiet)
    assert result.status == "completed"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # held-out loss on all tokens from ≈ 4.5 (random logits) down by 0.5, the bigram targets' below
    # ln 65 - 0.5 (a uniform guess): it learns
    assert rows[0]["eval/loss"] > math.log(65) and rows[-1]["eval/loss"] < rows[0]["eval/loss"] - 0.5
    assert rows[-1]["eval/bigram_loss"] < math.log(65) - 0.5
    # per-head probes of the 4-head model, and the W_F probe of its last layer's ReLU MLP
    last = rows[-1]
    assert {
        "probes/W_OV2",
        "head_probes/W_OV2/l1h3",
        "head_probes/W_KQ2/l1h0",
        "head_probes/W_KQ1/l0h2",
    } <= set(last)
    assert math.isfinite(last[f"probes/{FF_PROBE}"])
    assert FF_PROBE not in result.order  # a divergence has no ">= 0.9" step


def test_simplified_ffn_logs_the_w_f_probe_which_falls(tmp_path, one_thread):
    config = PRESETS["simplified-ffn"].replace(
        d_model=32, seq_len=32, batch_size=32, steps=30, eval_every=10, eval_batch_size=32,
        checkpoint_every=30)  # fmt: skip
    result = train(config, tmp_path / "run", device="cpu", progress=False, log=_quiet)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    kl = [r[f"probes/{FF_PROBE}"] for r in rows]
    assert len(kl) == 4 and kl[-1] < kl[0] - 0.1
    assert FF_PROBE not in result.order and "W_OV2" in result.order
    # the logged value is the probe of the final weights over the non-trigger tokens
    stats = load_stats()
    triggers = TriggeredBigram(config.task, stats).fixed_triggers
    model = load_run_model(tmp_path / "run")
    assert kl[-1] == pytest.approx(ff_bigram_kl(model, stats.bigram_probs, triggers), rel=1e-6)
    assert kl[-1] != pytest.approx(ff_bigram_kl(model, stats.bigram_probs, None), rel=1e-3)


# --- the bigram floor -------------------------------------------------------------------------------


def test_bigram_floor_is_the_mean_entropy_of_the_counter_zero_rows():
    bigram = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.9, 0.1, 0.0]], dtype=torch.float64)
    tokens = torch.tensor([[0, 1, 2, 1, 0], [2, 2, 0, 1, 1]])
    counter = torch.tensor([[0, 1, 0, 2], [0, 0, -1, 0]])
    batch = Batch(tokens, counter, torch.tensor([[1], [0]]), torch.tensor([[2], [1]]))

    def entropy(row: list[float]) -> float:
        return -sum(p * math.log(p) for p in row if p > 0)

    inputs = tokens[:, :-1].tolist()
    brute = [entropy(bigram[inputs[b][t]].tolist()) for b in range(2) for t in range(4) if counter[b, t] == 0]
    assert len(brute) == 5
    assert bigram_floor(batch, bigram) == pytest.approx(sum(brute) / len(brute), rel=1e-12)
    assert math.isnan(
        bigram_floor(Batch(tokens, torch.ones_like(counter), batch.triggers, batch.outputs), bigram)
    )


# --- the experiments ---------------------------------------------------------------------------------


def test_small_experiments_run_and_write_json_png_headline(tmp_path, one_thread):
    assert set(EXPERIMENTS) <= set(names("transformer"))
    for name in EXPERIMENTS:
        exp = get(name)
        lines: list[str] = []
        out = tmp_path / name
        result = run_experiment(name, exp.small(), out, progress=False, log=lines.append)
        saved = json.loads((out / "result.json").read_text())
        assert saved["experiment"] == name
        assert list(out.glob("*.png")), name
        assert result.headline() in lines[-1]
        if name == "layers-full":
            assert set(result.table) == {"2L", "1L"} and len(result.runs["2L"]) == 2
            assert 1.0 < result.bigram_floor < 4.2  # nats, below log 65
            for key, row in result.table.items():  # each depth's seed mean ± std of its runs
                icl = [run.final["eval/icl_acc"] for run in result.runs[key]]
                assert row.icl_acc == icl and (row.icl_acc_mean, row.icl_acc_std) == pytest.approx(
                    mean_std(icl)
                )
                # 4 steps: the bigram loss is still far above its floor (measured 4.07 and 4.21 vs 2.21)
                assert row.bigram_loss_mean > 1.5 * result.bigram_floor
        else:
            assert 1.0 < result.bigram_floor < 4.2
            assert saved["result"]["bigram_floor"] == pytest.approx(result.bigram_floor)
            assert set(result.icl_steps) == {"0.9", "0.99"}
            assert result.target_met == (
                result.final_icl_acc >= 0.99
                and result.final_bigram_loss <= (1 + result.tolerance) * result.bigram_floor
            )
        if name == "layers-full":  # the memories of each run: 0.9-crossing steps and correlations
            for key, row in result.table.items():
                assert row.probe_steps == [
                    {k: run.order[k] for k in steps} for run, steps in zip(result.runs[key], row.probe_steps)
                ]
            assert set(result.table["2L"].probe_steps[0]) == {"W_OV2", "W_KQ2", "W_KQ1"}
            assert set(result.table["1L"].probe_steps[0]) == {"W_OV"}
            # where each 2-layer run stores its previous-token memory, as global-vs-icl reports it
            assert len(result.previous_token) == len(result.runs["2L"])
            for reading in result.previous_token:
                assert sum(reading.first_occurrences) == pytest.approx(1.0)
        if name == "global-vs-icl":  # the memories, and where the previous-token memory is stored
            assert set(result.probe_steps) == set(result.probe_icl_correlation) == {"W_OV2", "W_KQ2", "W_KQ1"}
            icl = np.array(result.run.curve("eval/icl_acc"))
            ov2 = np.array(result.run.curve("probes/W_OV2"))
            if ov2.std() > 0 and icl.std() > 0:
                assert result.probe_icl_correlation["W_OV2"] == pytest.approx(np.corrcoef(ov2, icl)[0, 1])
            by_position = result.previous_token
            assert by_position.bin_starts[0] == 0 and len(by_position.bin_starts) == len(
                by_position.attention
            )
            assert sum(by_position.first_occurrences) == pytest.approx(1.0)
            # the weight reading by position averages, over all T - 1 positions, to the run's W_KQ1
            n = exp.small().train.task.seq_len - 1
            sizes = np.diff([*by_position.bin_starts, n])
            stored = float(np.dot(sizes, by_position.weight_reading)) / n
            assert stored == pytest.approx(result.run.final["probes/W_KQ1"], abs=1e-6)
        if name == "global-vs-icl-ffn":
            assert math.isfinite(result.ff_kl_start) and math.isfinite(result.ff_kl_final)
            kl = result.run.curve(f"probes/{FF_PROBE}")
            assert (result.ff_kl_start, result.ff_kl_final) == (kl[0], kl[-1])


def test_experiment_configs_refuse_what_they_cannot_measure():
    exp = get("global-vs-icl")
    with pytest.raises(ValueError, match="--loss-on must be all"):
        exp.config(train=exp.small().train.replace(loss_on="outputs"))
    with pytest.raises(ValueError, match="--tolerance"):
        exp.config(tolerance=float("nan"))
    ffn = get("global-vs-icl-ffn")
    with pytest.raises(ValueError, match="--mlp"):
        ffn.config(train=ffn.small().train.replace(mlp="none"))
    with pytest.raises(ValueError, match="--seeds"):
        get("layers-full").config(seeds=0)


# --- inspect: heads found on hand-built patterns, the shown sequence ----------------------------------


def _one_hot(keys: torch.Tensor, T: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(keys.clamp(min=0), T).float()


def test_find_heads_on_hand_built_attention_patterns():
    # a b a c a b: head (layer 1, head 1) attends to the previous token, head (2, 0) to the key
    # after the previous occurrence of the query's token; the others attend to themselves or uniformly
    inputs = torch.tensor([[0, 1, 0, 2, 0, 1]])
    B, T = inputs.shape
    triggers = torch.tensor([[0, 1]])
    counter = occurrence_counter(inputs, triggers)
    itself = torch.eye(T).expand(B, T, T)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)
    previous = _one_hot(torch.arange(T) - 1, T)  # row 0 (no previous token) on itself
    targets, valid = trigger_induction_targets(inputs, counter)
    induction = torch.where(valid.unsqueeze(-1), _one_hot(targets[0], T), itself)
    layer1 = torch.stack([uniform.expand(B, T, T), previous.expand(B, T, T)], dim=1)  # [B, head, T, T]
    layer2 = torch.stack([induction, itself], dim=1)
    scores = head_scores([layer1, layer2], previous_token_targets(B, T), (targets, valid), inputs, inputs)
    assert set(scores) == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert scores[1, 1]["previous_token"]["mass"] == 1.0 and scores[2, 0]["induction"]["mass"] == 1.0
    found = find_heads(scores, n_layers=2)
    assert found["previous_token_head"] == {"layer": 1, "head": 1, "score": 1.0}
    assert found["induction_head"] == {"layer": 2, "head": 0, "score": 1.0}
    # a previous-token pattern in the last layer is not the circuit's previous-token head
    swapped = find_heads(head_scores([layer2, layer1], previous_token_targets(B, T), (targets, valid),
                                     inputs, inputs), n_layers=2)  # fmt: skip
    assert swapped["previous_token_head"]["layer"] == 1 and swapped["previous_token_head"]["score"] < 1.0
    assert swapped["induction_head"]["layer"] == 2


def test_typical_sequence_skips_self_outputs_and_takes_the_median_count():
    T = 12
    rows = [
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],  # trigger 5 whose output is 5: "; ; ; ;"
        [5, 1, 2, 5, 1, 3, 4, 2, 0, 4, 2, 3, 0],  # 1 repeated occurrence
        [5, 1, 5, 1, 5, 1, 2, 3, 5, 1, 0, 2, 3],  # 3 repeated occurrences
        [5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 2],  # 5
        [5, 1, 5, 1, 5, 1, 5, 1, 0, 2, 3, 4, 0],  # 3
    ]
    tokens = torch.tensor(rows)
    triggers = torch.full((5, 1), 5)
    outputs = torch.tensor([[5], [1], [1], [1], [1]])
    batch = Batch(tokens, occurrence_counter(tokens[:, :-1], triggers), triggers, outputs)
    assert (batch.counter >= 2).sum(dim=1).tolist() == [T - 1, 1, 3, 5, 3]
    assert typical_sequence(batch) == 2  # candidates 2, 3, 4 (>= 2 repeats): median 3, lowest index
    assert typical_sequence(batch, max_positions=6) == 2  # within the first 6 positions: 2, 2, 2
    only_self = Batch(tokens[:1], batch.counter[:1], triggers[:1], outputs[:1])
    assert typical_sequence(only_self) == 0  # nothing else to show


def test_inspect_a_full_model_reports_every_head_and_writes_one_heatmap_per_head(
    tmp_path, capsys, one_thread
):
    config = PRESETS["full"].replace(
        d_model=16, n_heads=2, seq_len=16, batch_size=8, steps=2, eval_every=2, eval_batch_size=8,
        checkpoint_every=2, trigger_mode="random")  # fmt: skip
    train(config, tmp_path / "run", device="cpu", progress=False, log=_quiet)
    out = tmp_path / "inspect"
    assert cli_main(["inspect", str(tmp_path / "run"), "--out", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"attention_layer{layer}_head{head}.png" for layer in (1, 2) for head in (0, 1)}
    scores = json.loads((out / "scores.json").read_text())
    part = scores["triggered_bigram"]
    assert set(part["heads"]) == {f"layer{layer}.head{head}" for layer in (1, 2) for head in (0, 1)}
    prev, ind = part["previous_token_head"], part["induction_head"]
    assert prev["layer"] == 1 and ind["layer"] == 2
    assert prev["score"] == max(part["heads"][f"layer1.head{h}"]["previous_token"]["mass"] for h in (0, 1))
    assert f"previous-token head: layer 1 head {prev['head']}" in printed
    assert "layer 2 head 1: previous-token" in printed
    # the memory probes: the layer readings the run logged at that step, and the heads' weights
    report, logged = scores["memory_probes"], read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert report["reading"] == "layer" and logged["step"] == scores["step"]
    assert report["probes"] == {
        k.removeprefix("probes/"): v for k, v in logged.items() if k.startswith("probes/")
    }
    assert report["head_probes"]["W_OV2"] == logged["head_probes/W_OV2"]
    assert len(report["previous_token_weights"]) == len(report["induction_weights"]) == 2
    assert f"W_OV2 {report['probes']['W_OV2']:.3f}  W_KQ2 {report['probes']['W_KQ2']:.3f}" in printed
    assert 0 <= scores["shown_sequence"] < 8
    # --index still picks the sequence
    out2 = tmp_path / "inspect2"
    assert (
        cli_main(["inspect", str(tmp_path / "run"), "--out", str(out2), "--batch-size", "8", "--index", "3"])
        == 0
    )
    assert json.loads((out2 / "scores.json").read_text())["shown_sequence"] == 3
