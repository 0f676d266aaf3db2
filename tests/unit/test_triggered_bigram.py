"""The triggered-bigram sampler: laws of every variant, the occurrence counter, seeding, validation.

Statistical checks use fixed seeds (so they are deterministic) and chi-square bounds at z = 5 of
the Wilson-Hilferty approximation (a correct sampler fails one with probability ~3e-7 per row).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.shakespeare import load_stats
from tasks.triggered_bigram import (
    OUTPUT_MODES,
    TRIGGER_MODES,
    TaskConfig,
    TriggeredBigram,
    occurrence_counter,
)

N = 65
Z = 5.0  # standard-normal quantile of every chi-square bound


@pytest.fixture(scope="module")
def stats():
    return load_stats()


def make(stats, **kw) -> TriggeredBigram:
    return TriggeredBigram(TaskConfig(**kw), stats)


# -- helpers ------------------------------------------------------------------------------------


def chi2_bound(df: int, z: float = Z) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at standard-normal quantile z."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_stat(observed: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom; categories with expectation < 5 are pooled."""
    observed = observed.double()
    expected = probs.double() * observed.sum()
    big = expected >= 5
    obs = observed[big].tolist()
    exp = expected[big].tolist()
    if (~big).any():
        obs.append(float(observed[~big].sum()))
        exp.append(float(expected[~big].sum()))
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    assert all(o == 0 for o, e in zip(obs, exp) if e == 0), "a zero-probability category occurred"
    return stat, len(obs) - 1


def assert_law(observed: torch.Tensor, probs: torch.Tensor, what: str) -> None:
    assert bool((observed[probs == 0] == 0).all()), f"{what}: a zero-probability token occurred"
    stat, df = chi2_stat(observed, probs)
    if df >= 1:
        assert stat < chi2_bound(df), f"{what}: chi2 = {stat:.1f} with {df} dof"


def brute_force_counter(tokens: list[int], triggers: list[int]) -> list[int]:
    """n if tokens[t] is the n-th occurrence of one of the triggers, else 0 (plain Python)."""
    seen: Counter[int] = Counter()
    out = []
    for x in tokens:
        if x in triggers:
            seen[x] += 1
            out.append(seen[x])
        else:
            out.append(0)
    return out


def brute_force_batch(inputs: torch.Tensor, triggers: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [brute_force_counter(i, q) for i, q in zip(inputs.tolist(), triggers.tolist())],
        dtype=torch.long,
    ).view(inputs.shape)


# -- fixed and random triggers -------------------------------------------------------------------


def test_fixed_triggers_are_the_most_frequent(stats) -> None:
    s = make(stats, n_triggers=5)
    assert stats.decode(s.fixed_triggers) == " etoa"
    counts = stats.unigram_counts.tolist()
    brute = sorted(range(N), key=lambda i: (-counts[i], i))
    assert s.fixed_triggers.tolist() == brute[:5]
    b = s.sample(3, 0)
    assert b.triggers.tolist() == [brute[:5]] * 3
    # about 40.6% of the unigram mass
    assert abs(float(stats.unigram_probs[s.fixed_triggers].sum()) - 0.406) < 0.001


@pytest.mark.parametrize("k, offset", [(1, 0), (3, 2), (5, 5), (2, 63), (64, 0), (0, 0)])
def test_trigger_offset_shifts_the_ranking(stats, k: int, offset: int) -> None:
    counts = stats.unigram_counts.tolist()
    brute = sorted(range(N), key=lambda i: (-counts[i], i))
    s = make(stats, n_triggers=k, trigger_offset=offset)
    assert s.fixed_triggers.tolist() == brute[offset : offset + k]
    assert s.sample(2, 0).triggers.shape == (2, k)


def test_random_triggers_distinct_and_unigram(stats) -> None:
    s = make(stats, trigger_mode="random", n_triggers=5)
    gen = s.generator(0)
    B = 20_000
    trig = s.sample_triggers(B, gen)
    assert trig.shape == (B, 5)
    srt = trig.sort(dim=1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all()), "random triggers repeat within a sequence"
    # the first draw of sampling without replacement follows the unigram law exactly
    assert_law(torch.bincount(trig[:, 0], minlength=N), stats.unigram_probs, "first trigger")
    # inclusion frequency of each token vs an independent reference for successive sampling
    # without replacement (Gumbel top-k, numpy): same law, so frequencies agree within noise
    rng = np.random.default_rng(0)
    logp = np.log(stats.unigram_probs.numpy())
    keys = logp + rng.gumbel(size=(B, N))
    ref = np.argsort(-keys, axis=1)[:, :5]
    f_torch = torch.bincount(trig.flatten(), minlength=N).double().numpy() / B
    f_ref = np.bincount(ref.flatten(), minlength=N) / B
    sigma = np.sqrt((f_torch * (1 - f_torch) + f_ref * (1 - f_ref)) / B) + 1e-4
    assert np.all(np.abs(f_torch - f_ref) < Z * sigma), np.abs(f_torch - f_ref).max()
    # not the fixed triggers in disguise: the 5 most frequent characters are one set among many
    assert len({tuple(r) for r in srt[:200].tolist()}) > 100


def test_random_triggers_differ_between_sequences(stats) -> None:
    b = make(stats, trigger_mode="random").sample(64, 3)
    assert len({tuple(r) for r in b.triggers.tolist()}) > 32


# -- outputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
def test_no_repeat_never_emits_the_trigger(stats, trigger_mode: str) -> None:
    s = make(stats, trigger_mode=trigger_mode, output_mode="no_repeat")
    gen = s.generator(1)
    trig = s.sample_triggers(20_000, gen)
    out = s.sample_outputs(trig, gen)
    assert bool((out != trig).all())
    assert bool(((out >= 0) & (out < N)).all())
    if trigger_mode == "fixed":  # uniform over the other 64 tokens
        for k in range(5):
            probs = torch.full((N,), 1.0 / (N - 1), dtype=torch.float64)
            probs[trig[0, k]] = 0.0
            assert_law(torch.bincount(out[:, k], minlength=N), probs, f"no-repeat output {k}")
    # and in sampled sequences no trigger is ever followed by itself
    b = s.sample(256, 2)
    hit = b.inputs.unsqueeze(-1) == b.triggers.unsqueeze(1)  # [B, T, K]
    assert bool(hit.any())
    assert not bool((hit.any(-1) & (b.targets == b.inputs)).any())


def test_uniform_outputs_law_and_can_equal_trigger(stats) -> None:
    s = make(stats, output_mode="uniform")
    gen = s.generator(2)
    trig = s.sample_triggers(20_000, gen)
    out = s.sample_outputs(trig, gen)
    uniform = torch.full((N,), 1.0 / N, dtype=torch.float64)
    for k in range(5):
        assert_law(torch.bincount(out[:, k], minlength=N), uniform, f"uniform output {k}")
    same = out == trig
    assert bool(same.any()), "uniform outputs must be able to equal their own trigger"
    assert abs(float(same.double().mean()) - 1 / N) < 0.003


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
def test_bigram_outputs_follow_the_trigger_row(stats, trigger_mode: str) -> None:
    s = make(stats, trigger_mode=trigger_mode, output_mode="bigram")
    gen = s.generator(3)
    trig = s.sample_triggers(20_000, gen)
    out = s.sample_outputs(trig, gen)
    q, o = trig.flatten(), out.flatten()
    checked = 0
    for v in torch.unique(q).tolist():
        sel = o[q == v]
        if sel.numel() < 2000:
            continue
        assert_law(torch.bincount(sel, minlength=N), stats.bigram_probs[v], f"o | q={v}")
        checked += 1
    assert checked >= 5


# -- sequences ------------------------------------------------------------------------------------


def test_first_token_follows_unigram(stats) -> None:
    b = make(stats, seq_len=2).sample(50_000, 4)
    assert_law(torch.bincount(b.tokens[:, 0], minlength=N), stats.unigram_probs, "z_1")


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
def test_non_trigger_transitions_follow_bigram(stats, trigger_mode: str) -> None:
    s = make(stats, trigger_mode=trigger_mode)
    b = s.sample(1024, 5)
    free = b.counter == 0  # the input is not a trigger of its sequence
    prev, nxt = b.inputs[free], b.targets[free]
    table = torch.bincount(prev * N + nxt, minlength=N * N).view(N, N)
    rows = table.sum(dim=1)
    checked = 0
    for i in range(N):
        if rows[i] < 2000:
            continue
        assert_law(table[i], stats.bigram_probs[i], f"z_t+1 | z_t={stats.vocab[i]!r}")
        checked += 1
    assert checked >= (15 if trigger_mode == "fixed" else 20)
    # and no pair outside the corpus's 1,403 ever occurs after a non-trigger
    assert bool((table[stats.bigram_counts == 0] == 0).all())


def test_pure_bigram_chain_without_triggers(stats) -> None:
    b = make(stats, n_triggers=0).sample(512, 6)
    assert b.triggers.shape == (512, 0) and b.outputs.shape == (512, 0)
    assert bool((b.counter == 0).all())
    pairs = torch.bincount(b.inputs.flatten() * N + b.targets.flatten(), minlength=N * N).view(N, N)
    assert bool((pairs[stats.bigram_counts == 0] == 0).all())
    space = stats.vocab.index(" ")
    assert_law(pairs[space], stats.bigram_probs[space], "row ' ' without triggers")


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
@pytest.mark.parametrize("output_mode", OUTPUT_MODES)
def test_every_trigger_is_followed_by_its_output(stats, trigger_mode: str, output_mode: str) -> None:
    s = make(stats, trigger_mode=trigger_mode, output_mode=output_mode, seq_len=64)
    b = s.sample(256, 7)
    assert b.tokens.shape == (256, 65) and b.tokens.dtype == torch.long
    assert b.counter.shape == (256, 64) and b.counter.dtype == torch.long
    assert bool(((b.tokens >= 0) & (b.tokens < N)).all())
    hit = b.inputs.unsqueeze(-1) == b.triggers.unsqueeze(1)  # [B, T, K]
    assert int(hit.sum()) > 1000
    expected = (hit.long() * b.outputs.unsqueeze(1)).sum(-1)  # the output of the matched trigger
    is_trig = hit.any(-1)
    assert torch.equal(b.targets[is_trig], expected[is_trig])
    assert torch.equal(is_trig, b.counter > 0)


# -- the occurrence counter ---------------------------------------------------------------------


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
@pytest.mark.parametrize("output_mode", OUTPUT_MODES)
def test_counter_equals_brute_force(stats, trigger_mode: str, output_mode: str) -> None:
    s = make(stats, trigger_mode=trigger_mode, output_mode=output_mode, seq_len=48)
    b = s.sample(64, 8)
    assert torch.equal(b.counter, brute_force_batch(b.inputs, b.triggers))
    assert int(b.counter.max()) >= 3


def test_counter_when_outputs_are_triggers(stats) -> None:
    s = make(stats, output_mode="uniform", seq_len=64)
    b = s.sample(128, 9)
    chained = (b.outputs.unsqueeze(-1) == b.triggers.unsqueeze(1)).any(-1).any(-1)  # [B]
    assert int(chained.sum()) >= 5, "seed should give sequences whose outputs are triggers"
    ref = brute_force_batch(b.inputs[chained], b.triggers[chained])
    assert torch.equal(b.counter[chained], ref)
    # the forced step into another trigger counts that trigger's occurrence too
    q = b.triggers[chained]
    later = b.inputs[chained][:, 1:]
    after_trigger = (b.inputs[chained][:, :-1].unsqueeze(-1) == q.unsqueeze(1)).any(-1)
    later_is_trigger = (later.unsqueeze(-1) == q.unsqueeze(1)).any(-1)
    assert bool((after_trigger & later_is_trigger).any())
    # hand-made: triggers 1 -> 2 and 2 -> 1 in a cycle, token 0 is ordinary
    tokens = torch.tensor([[1, 2, 1, 2, 0, 1, 2]])
    assert occurrence_counter(tokens, torch.tensor([[1, 2]])).tolist() == [[1, 1, 2, 2, 0, 3, 3]]
    assert occurrence_counter(tokens, torch.tensor([[2, 1]])).tolist() == [[1, 1, 2, 2, 0, 3, 3]]


@st.composite
def counter_cases(draw):
    n = draw(st.integers(2, 8))
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 24))
    k = draw(st.integers(0, n - 1))
    inputs = draw(st.lists(st.lists(st.integers(0, n - 1), min_size=t, max_size=t), min_size=b, max_size=b))
    triggers = [draw(st.permutations(range(n)))[:k] for _ in range(b)]
    return inputs, triggers, k


@settings(max_examples=150, deadline=None)
@given(counter_cases())
def test_counter_property(case) -> None:
    inputs, triggers, k = case
    x = torch.tensor(inputs, dtype=torch.long)
    q = torch.tensor(triggers, dtype=torch.long).view(len(inputs), k)
    assert torch.equal(occurrence_counter(x, q), brute_force_batch(x, q))


@pytest.mark.parametrize("trigger_mode, ge1, ge2", [("fixed", 0.316, 0.297), ("random", 0.253, 0.235)])
def test_counter_fractions_match_the_paper(stats, trigger_mode: str, ge1: float, ge2: float) -> None:
    b = make(stats, trigger_mode=trigger_mode, n_triggers=5, seq_len=256).sample(2048, 10)
    f1 = float((b.counter >= 1).double().mean())
    f2 = float((b.counter >= 2).double().mean())
    assert abs(f1 - ge1) < 0.008, f1
    assert abs(f2 - ge2) < 0.008, f2


# -- seeding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
@pytest.mark.parametrize("output_mode", OUTPUT_MODES)
def test_same_seed_same_batch(stats, trigger_mode: str, output_mode: str) -> None:
    kw = dict(trigger_mode=trigger_mode, output_mode=output_mode, seq_len=32)
    a = make(stats, **kw).sample(16, 123)
    b = make(stats, **kw).sample(16, torch.Generator().manual_seed(123))
    for name in ("tokens", "counter", "triggers", "outputs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = make(stats, **kw).sample(16, 124)
    assert not torch.equal(a.tokens, c.tokens)
    if trigger_mode == "random":
        assert not torch.equal(a.triggers, c.triggers)
    assert not torch.equal(a.outputs, c.outputs)


def test_generator_advances_between_batches(stats) -> None:
    s = make(stats)
    gen = s.generator(0)
    first, second = s.sample(8, gen), s.sample(8, gen)
    assert not torch.equal(first.tokens, second.tokens)
    replay = s.generator(0)
    assert torch.equal(s.sample(8, replay).tokens, first.tokens)
    assert torch.equal(s.sample(8, replay).tokens, second.tokens)


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(n_triggers=-1), "n_triggers"),
        (dict(n_triggers=65), "n_triggers"),
        (dict(n_triggers=100), "n_triggers"),
        (dict(seq_len=1), "seq_len"),
        (dict(seq_len=0), "seq_len"),
        (dict(trigger_mode="randomly"), "trigger_mode"),
        (dict(output_mode="unifrom"), "output_mode"),
        (dict(trigger_offset=-1), "trigger_offset"),
        (dict(n_triggers=5, trigger_offset=61), "trigger_offset"),
        (dict(n_triggers=64, trigger_offset=2), "trigger_offset"),
    ],
)
def test_invalid_config_raises_naming_the_field(stats, kw: dict, field: str) -> None:
    flag = "--" + field.replace("_", "-")  # messages name the command-line flag
    with pytest.raises(ValueError, match=flag):
        make(stats, **kw)
    with pytest.raises(ValueError, match=flag):
        TaskConfig(**kw).validate(N)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_invalid_batch_size_raises(stats, batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make(stats).sample(batch_size, 0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_triggers=64),
        dict(n_triggers=64, trigger_offset=1),
        dict(n_triggers=5, trigger_offset=60),
        dict(seq_len=2),
        dict(trigger_mode="random", n_triggers=64),
        dict(trigger_mode="random", n_triggers=0, output_mode="bigram"),
        dict(trigger_offset=100, trigger_mode="random"),  # the offset only applies to fixed triggers
    ],
)
def test_edge_configs_are_valid(stats, kw: dict) -> None:
    b = make(stats, **kw).sample(4, 0)
    k = kw.get("n_triggers", 5)
    assert b.triggers.shape == (4, k)
    assert torch.equal(b.counter, brute_force_batch(b.inputs, b.triggers))


# -- held-out outputs (--output-split) and latents shown at the start (--show-latents) -----------


N_TRAIN = int(0.75 * N)  # 48: the reference's int(0.75 * num_tokens)


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
@pytest.mark.parametrize("split, lo, hi", [("train", 0, N_TRAIN), ("test", N_TRAIN, N)])
def test_output_split_is_uniform_over_its_ids(stats, trigger_mode: str, split: str, lo: int, hi: int) -> None:
    s = make(stats, trigger_mode=trigger_mode, output_split=split)
    gen = s.generator(11)
    trig = s.sample_triggers(20_000, gen)
    out = s.sample_outputs(trig, gen)
    assert int(out.min()) >= lo and int(out.max()) < hi
    law = torch.zeros(N, dtype=torch.float64)
    law[lo:hi] = 1.0 / (hi - lo)
    assert_law(torch.bincount(out.flatten(), minlength=N), law, f"{split} outputs")
    # in sampled sequences every trigger is followed by an output of the split
    b = s.sample(64, 12)
    after = b.counter > 0
    assert bool(after.any())
    assert bool(((b.targets[after] >= lo) & (b.targets[after] < hi)).all())


@pytest.mark.parametrize("split, lo, hi", [("train", 0, N_TRAIN), ("test", N_TRAIN, N)])
def test_output_split_no_repeat(stats, split: str, lo: int, hi: int) -> None:
    # random triggers: some fall inside the split's ids (one choice fewer), most outside
    s = make(stats, trigger_mode="random", output_mode="no_repeat", output_split=split)
    gen = s.generator(13)
    trig = s.sample_triggers(20_000, gen)
    out = s.sample_outputs(trig, gen)
    assert bool((out != trig).all())
    assert int(out.min()) >= lo and int(out.max()) < hi
    q, o = trig.flatten(), out.flatten()
    checked = 0
    for v in torch.unique(q).tolist():
        sel = o[q == v]
        if sel.numel() < 1500:
            continue
        law = torch.zeros(N, dtype=torch.float64)
        law[lo:hi] = 1.0
        law[v] = 0.0
        assert_law(torch.bincount(sel, minlength=N), law / law.sum(), f"no_repeat {split} o | q={v}")
        checked += 1
    assert checked >= 5
    inside = [v for v in torch.unique(q).tolist() if lo <= v < hi and (q == v).sum() >= 1500]
    assert inside, "the seed should give a trigger inside the split (the skip branch)"


@pytest.mark.parametrize("trigger_mode", TRIGGER_MODES)
def test_show_latents_opens_with_the_triggers(stats, trigger_mode: str) -> None:
    k = 5
    s = make(stats, trigger_mode=trigger_mode, show_latents=True, seq_len=48)
    b = s.sample(256, 14)
    assert b.tokens.shape == (256, 49)
    assert torch.equal(b.tokens[:, :k], b.triggers)
    assert bool((b.counter[:, :k] == -1).all())
    # the chain after the latents: its counter counts occurrences from z_{K+1} on
    chain = b.inputs[:, k:]
    assert torch.equal(b.counter[:, k:], brute_force_batch(chain, b.triggers))
    hit = (chain.unsqueeze(-1) == b.triggers.unsqueeze(1)).any(-1)
    expected = ((chain.unsqueeze(-1) == b.triggers.unsqueeze(1)).long() * b.outputs.unsqueeze(1)).sum(-1)
    assert torch.equal(b.targets[:, k:][hit], expected[hit])
    # a latent is not followed by its output: z_{K+1} ~ unigram whatever the last latent is
    first = make(stats, trigger_mode=trigger_mode, show_latents=True, seq_len=6).sample(40_000, 15)
    assert_law(torch.bincount(first.tokens[:, k], minlength=N), stats.unigram_probs, "z_{K+1}")


def test_show_latents_masks_latent_targets_from_every_metric(stats) -> None:
    from tasks.triggered_bigram import loss_mask

    b = make(stats, show_latents=True, seq_len=32).sample(8, 16)
    outputs = loss_mask(b, "outputs")
    assert not bool(outputs[:, :5].any())
    assert not bool((b.counter[:, :5] == 0).any())  # nor bigram targets (counter == 0)
    assert bool(loss_mask(b, "all")[:, :5].all())  # the all-token loss keeps them, as the reference


@pytest.mark.parametrize(
    "kw, flag",
    [
        (dict(output_split="heldout"), "--output-split"),
        (dict(output_split="test", output_mode="bigram"), "--output-split"),
        (dict(show_latents=True, n_triggers=8, seq_len=8), "--show-latents"),
        (dict(show_latents=1), "--show-latents"),
    ],
)
def test_invalid_split_and_latent_options(kw: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        TaskConfig(**kw)
