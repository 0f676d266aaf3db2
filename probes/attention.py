"""Attention scores, heatmaps and an offline circuitsvis view of the induction circuit.

Scores are pure functions of an attention pattern [batch, query, key] (one head; TransformerLens'
`blocks.{l}.attn.hook_pattern` with its head axis removed), so they are tested on hand-built
patterns. Every score asks the same question: how much does a query attend to one *target* key?

- previous-token score (layer 1): target of query t is t - 1, for t >= 1;
- induction score (layer 2) on a batch of the run's task (`induction_targets`): at a query whose
  token occurred before, the target is the position right after its previous occurrence, where the
  token that followed it sits. The queries: the repeated triggers (counter >= 2) of a task whose
  batches count trigger occurrences (triggered-bigram), else those the task's ideal induction pattern
  constrains (`tasks.circuits.InductionTask`: every repeated state of markov-icl), else every query
  whose token occurred before;
- prefix-matching (induction) score on repeated random tokens [x_1..x_n, x_1..x_n]: the target of a
  second-half query t is t - n + 1, the key right after the same token's first-half copy. This is
  the score TransformerLens / ARENA report (the mean of the diagonal at offset -(n-1)), restricted
  to second-half queries because our sequences have no BOS token to pad the first half.

Each score comes as `mass` (mean attention weight on the target) and `argmax` (fraction of queries
whose most-attended key is the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tasks.circuits import InductionTask
from tasks.protocol import Task, TokenBatch
from tasks.shakespeare import CorpusStats
from tasks.triggered_bigram import Batch


@dataclass
class AttentionScore:
    mass: float  # mean attention weight that the scored queries put on their target key
    argmax: float  # fraction of scored queries whose most-attended key is the target
    n_queries: int  # number of scored (batch, query) pairs; scores are nan when 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# targets and scores on pattern tensors
# ---------------------------------------------------------------------------------------------


def _check_pattern(pattern: torch.Tensor) -> None:
    if pattern.dim() != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(f"attention pattern must be [batch, query, key], got {tuple(pattern.shape)}")


@torch.no_grad()
def target_attention(pattern: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> AttentionScore:
    """Attention of each valid query on its target key.

    pattern [B, T, T] (rows sum to one), targets [B, T] key index per query, valid [B, T] bool.
    """
    _check_pattern(pattern)
    if targets.shape != pattern.shape[:2] or valid.shape != pattern.shape[:2]:
        raise ValueError(
            f"targets {tuple(targets.shape)} and valid {tuple(valid.shape)} must be "
            f"[batch, query] = {tuple(pattern.shape[:2])}"
        )
    valid = valid.to(pattern.device).bool()
    n = int(valid.sum())
    if n == 0:
        return AttentionScore(float("nan"), float("nan"), 0)
    # invalid queries may carry any target (e.g. -1): clamp before gathering, they are masked out
    safe = targets.to(pattern.device).long().clamp(0, pattern.shape[2] - 1)
    on_target = pattern.gather(2, safe.unsqueeze(-1)).squeeze(-1)
    hit = pattern.argmax(dim=-1) == safe
    return AttentionScore(
        mass=on_target[valid].float().mean().item(),
        argmax=hit[valid].float().mean().item(),
        n_queries=n,
    )


@torch.no_grad()
def target_set_attention(
    pattern: torch.Tensor, target_keys: torch.Tensor, valid: torch.Tensor
) -> AttentionScore:
    """Attention of each valid query on a *set* of target keys (target_keys [B, T, T] bool):
    mass = total weight on the set, argmax = the most-attended key is in the set."""
    _check_pattern(pattern)
    valid = valid.to(pattern.device).bool()
    n = int(valid.sum())
    if n == 0:
        return AttentionScore(float("nan"), float("nan"), 0)
    target_keys = target_keys.to(pattern.device).bool()
    mass = (pattern * target_keys).sum(dim=-1)
    hit = target_keys.gather(2, pattern.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return AttentionScore(mass[valid].float().mean().item(), hit[valid].float().mean().item(), n)


def after_earlier_occurrences(tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool: key s follows an earlier occurrence of query t's token (tokens[s-1] ==
    tokens[t], s - 1 < t). An induction head may split its attention over all of these keys, since
    each holds the same output when the token is a trigger."""
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # [B, query t, key s-1]
    T = tokens.shape[1]
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(diagonal=-1)
    prev_match = same & earlier  # [B, t, s'] with s' < t
    # shift keys by one: key s = s' + 1 (s <= t, so still causal)
    return torch.nn.functional.pad(prev_match, (1, 0))[:, :, :T]


def previous_token_targets(batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query t targets key t - 1; position 0 has no previous token."""
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    return positions - 1, positions >= 1


def previous_occurrence(tokens: torch.Tensor) -> torch.Tensor:
    """[B, T]: the last position s < t with tokens[b, s] == tokens[b, t], or -1 if none."""
    T = tokens.shape[1]
    same = tokens.unsqueeze(2) == tokens.unsqueeze(1)  # [B, query t, key s]
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(diagonal=-1)
    positions = torch.arange(T, device=tokens.device)
    # latest earlier match: max of s over matches, -1 where there is none
    return torch.where(same & earlier, positions, -1).amax(dim=2)


def trigger_induction_targets(
    inputs: torch.Tensor, counter: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries with counter >= 2 (a trigger seen before) target the key after its previous occurrence."""
    return previous_occurrence(inputs) + 1, counter >= 2


def induction_targets(
    inputs: torch.Tensor, counter: torch.Tensor | None = None, task: Task | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, valid) [B, T]: the queries an induction score reads and, for each, the key right
    after the previous occurrence of its token. The queries: with an occurrence `counter` (the
    batches of a `tasks.protocol.MemoryTask`), the repeated triggers (counter >= 2); else the rows
    `task`'s ideal induction pattern constrains (`tasks.circuits.InductionTask`); else every query
    whose token occurred before."""
    if counter is not None:
        return trigger_induction_targets(inputs, counter)
    targets = previous_occurrence(inputs) + 1
    if isinstance(task, InductionTask):
        try:
            return targets, task.induction_pattern(inputs)[1].to(inputs.device)
        except ValueError:  # a configuration whose ideal pattern the tokens do not show
            pass
    return targets, targets >= 1


def batch_counter(batch: TokenBatch) -> torch.Tensor | None:
    """The occurrence counter [B, T] a `tasks.protocol.MemoryTask`'s batches carry, else None."""
    return getattr(batch, "counter", None)


def repeated_sequence_targets(batch_size: int, half_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[x_1..x_n, x_1..x_n]: second-half query t targets t - n + 1 (prefix matching)."""
    positions = torch.arange(2 * half_len).expand(batch_size, 2 * half_len)
    return positions - half_len + 1, positions >= half_len


def previous_token_score(pattern: torch.Tensor) -> AttentionScore:
    """Attention from t + 1 to t, over all t."""
    _check_pattern(pattern)
    targets, valid = previous_token_targets(pattern.shape[0], pattern.shape[1])
    return target_attention(pattern, targets, valid)


def trigger_induction_score(
    pattern: torch.Tensor, inputs: torch.Tensor, counter: torch.Tensor
) -> AttentionScore:
    """Attention of second and later trigger occurrences on the previous occurrence's output."""
    targets, valid = trigger_induction_targets(inputs, counter)
    return target_attention(pattern, targets, valid)


def prefix_matching_score(pattern: torch.Tensor, half_len: int) -> AttentionScore:
    """The standard induction score of a pattern on [x_1..x_n, x_1..x_n] with n = half_len."""
    _check_pattern(pattern)
    if pattern.shape[1] != 2 * half_len:
        raise ValueError(
            f"a repeated sequence of half length {half_len} has {2 * half_len} positions, "
            f"the pattern has {pattern.shape[1]}"
        )
    targets, valid = repeated_sequence_targets(pattern.shape[0], half_len)
    return target_attention(pattern, targets, valid)


@torch.no_grad()
def attended_token_agreement(
    pattern: torch.Tensor, inputs: torch.Tensor, predictions: torch.Tensor, valid: torch.Tensor
) -> float:
    """Fraction of valid queries whose most-attended key holds the token the model predicts.

    An induction head copies the token it attends to: agreement near one says the prediction comes
    from that copy.
    """
    _check_pattern(pattern)
    valid = valid.to(pattern.device).bool()
    if not valid.any():
        return float("nan")
    attended = inputs.to(pattern.device).gather(1, pattern.argmax(dim=-1))
    agree = attended == predictions.to(pattern.device)
    return agree[valid].float().mean().item()


def repeated_random_tokens(batch_size: int, half_len: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """[B, 2n] uniform random tokens, each row its first half repeated."""
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(0, vocab_size, (batch_size, half_len), generator=gen)
    return torch.cat([half, half], dim=1)


# ---------------------------------------------------------------------------------------------
# on a model
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def head_patterns(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [B, T, N], one pattern [B, head, T, T] per layer) from TransformerLens' hook_pattern."""
    n_layers = model.cfg.n_layers
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)}
    device = next(model.parameters()).device
    logits, cache = model.run_with_cache(tokens.to(device), names_filter=lambda name: name in names)
    patterns = [cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu() for layer in range(n_layers)]
    return logits.float().cpu(), patterns


@torch.no_grad()
def attention_patterns(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [B, T, N], one pattern [B, T, T] per layer) of a model with one head per layer."""
    logits, patterns = head_patterns(model, tokens)
    if patterns[0].shape[1] != 1:
        raise ValueError(f"expected one attention head per layer, got {patterns[0].shape[1]}")
    return logits, [pattern[:, 0] for pattern in patterns]


# ---------------------------------------------------------------------------------------------
# the reference code's attention probes, logged during training (`training.evaluation.CircuitProbes`)
# ---------------------------------------------------------------------------------------------


def trigger_previous_token_targets(counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query t + 1 (the output right after a trigger at t, counter[t] >= 1) targets key t."""
    B, T = counter.shape
    positions = torch.arange(T, device=counter.device).expand(B, T)
    after_trigger = torch.nn.functional.pad(counter[:, :-1] >= 1, (1, 0))  # valid[t + 1] = counter[t] >= 1
    return positions - 1, after_trigger


@torch.no_grad()
def forward_with_patterns(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [B, T, N], one attention pattern [B, T, T] per layer), from one TransformerLens
    forward whose hooks keep the patterns (no activation cache), on the model's device.

    One head per layer (the simplified model)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if n_heads != 1:
        raise ValueError(f"forward_with_patterns reads one head per layer, the model has {n_heads}")
    kept: dict[str, torch.Tensor] = {}

    def keep(pattern: torch.Tensor, hook) -> None:
        kept[hook.name] = pattern[:, 0]

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    device = next(model.parameters()).device
    logits = model.run_with_hooks(tokens.to(device), fwd_hooks=[(name, keep) for name in names])
    return logits, [kept[name] for name in names]


@torch.no_grad()
def circuit_probes(
    pattern1: torch.Tensor,
    pattern2: torch.Tensor,
    inputs: torch.Tensor,
    counter: torch.Tensor,
    predictions: torch.Tensor,
) -> dict[str, float]:
    """The reference code's attention probes of the induction circuit (ihead_basic_main.py).

    - `score_acc`: at the output after a trigger (query t + 1, counter[t] >= 1), layer 1's argmax
      key is t (the previous-token head at the positions the circuit needs); `prev_mass`: the
      attention weight there;
    - `score2_acc`: at a repeated trigger (counter >= 2), layer 2's argmax key s follows an
      earlier occurrence of the same token (inputs[s - 1] == inputs[t], s >= 1: the key holds that
      occurrence's output); `induction_mass`: the total weight on such keys;
    - `pred_attended_acc`: at those queries, the token at layer 2's argmax key is the prediction.

    Only the scored query rows are gathered, so the cost is O(queries x T), not O(B x T x T).
    NaN when the batch has no such query.
    """
    for pattern in (pattern1, pattern2):
        _check_pattern(pattern)
    device = pattern1.device
    inputs, counter, predictions = inputs.to(device), counter.to(device), predictions.to(device)
    T = inputs.shape[1]
    nan = float("nan")
    out = {
        "score_acc": nan,
        "prev_mass": nan,
        "score2_acc": nan,
        "induction_mass": nan,
        "pred_attended_acc": nan,
    }

    targets, valid = trigger_previous_token_targets(counter)
    b, t = torch.nonzero(valid, as_tuple=True)
    if len(b):
        rows = pattern1[b, t]  # [M, T]
        out["score_acc"] = (rows.argmax(dim=-1) == t - 1).float().mean().item()
        out["prev_mass"] = rows.gather(1, (t - 1).unsqueeze(1)).float().mean().item()

    b, t = torch.nonzero(counter >= 2, as_tuple=True)
    if len(b):
        rows = pattern2[b, t]  # [M, T]
        keys = torch.arange(T, device=device)
        # key s qualifies when the token before it is the query's token and s - 1 < t
        before = torch.nn.functional.pad(inputs[:, :-1], (1, 0), value=-1)[b]  # [M, T]: inputs[s - 1]
        target_keys = (before == inputs[b, t].unsqueeze(1)) & (keys <= t.unsqueeze(1))
        argmax = rows.argmax(dim=-1)
        out["score2_acc"] = target_keys.gather(1, argmax.unsqueeze(1)).float().mean().item()
        out["induction_mass"] = (rows * target_keys).sum(dim=-1).float().mean().item()
        out["pred_attended_acc"] = (inputs[b, argmax] == predictions[b, t]).float().mean().item()
    return out


def _layer_scores(
    patterns: Sequence[torch.Tensor],
    targets_valid: tuple[torch.Tensor, torch.Tensor],
    induction: tuple[torch.Tensor, torch.Tensor],
    inputs: torch.Tensor,
    predictions: torch.Tensor,
) -> dict[str, dict]:
    """previous-token and induction scores of every layer (the circuit uses layer 1 and layer 2)."""
    out = {}
    for layer, pattern in enumerate(patterns, start=1):
        scores = {
            "previous_token": target_attention(pattern, *targets_valid).to_dict(),
            "induction": target_attention(pattern, *induction).to_dict(),
            # any earlier occurrence, not only the latest: the mass an induction head spreads
            "induction_any": target_set_attention(
                pattern, after_earlier_occurrences(inputs), induction[1]
            ).to_dict(),
        }
        scores["induction"]["attended_is_prediction"] = attended_token_agreement(
            pattern, inputs, predictions, induction[1]
        )
        out[f"layer{layer}"] = scores
    return out


def head_name(layer: int, head: int) -> str:
    """The key of head `head` (0-based) of layer `layer` (1-based, as "layer1") in the scores."""
    return f"layer{layer}.head{head}"


def head_scores(
    patterns: Sequence[torch.Tensor],
    targets_valid: tuple[torch.Tensor, torch.Tensor],
    induction: tuple[torch.Tensor, torch.Tensor],
    inputs: torch.Tensor,
    predictions: torch.Tensor,
) -> dict[tuple[int, int], dict]:
    """`_layer_scores` of every head, patterns [B, head, T, T] per layer, keyed by (layer, head):
    layers numbered from 1 (as "layer1"), heads from 0 (as TransformerLens)."""
    out = {}
    for layer, pattern in enumerate(patterns, start=1):
        per_head = [pattern[:, head] for head in range(pattern.shape[1])]
        layers = _layer_scores(per_head, targets_valid, induction, inputs, predictions)
        for head, scores in enumerate(layers.values()):
            out[layer, head] = scores
    return out


INDUCTION_KEY = "induction_any"  # what the induction head is chosen by (its mass may be spread)


def find_heads(scores: dict[tuple[int, int], dict], n_layers: int) -> dict[str, dict | None]:
    """The previous-token head and the induction head, each {"layer", "head", "score"}: the head
    with the highest previous-token mass among the layers before the last, and the one with the
    highest induction mass (`INDUCTION_KEY`) among the layers after the first (every layer of a
    1-layer model, where the circuit cannot form). NaN scores never win; None if all are NaN."""

    def best(key: str, layers: range) -> dict | None:
        found = None
        for (layer, head), values in scores.items():
            value = values[key]["mass"]
            if layer in layers and not math.isnan(value) and (found is None or value > found["score"]):
                found = {"layer": layer, "head": head, "score": value}
        return found

    every = range(1, n_layers + 1)
    return {
        "previous_token_head": best("previous_token", range(1, n_layers) if n_layers > 1 else every),
        "induction_head": best(INDUCTION_KEY, range(2, n_layers + 1) if n_layers > 1 else every),
    }


def _per_head_part(patterns, targets_valid, induction, inputs, predictions) -> dict:
    """Per-layer scores (`layer{l}`, for a model with one head per layer), every head's, and the
    chosen heads."""
    heads = head_scores(patterns, targets_valid, induction, inputs, predictions)
    out: dict = {}
    if patterns[0].shape[1] == 1:
        out.update({f"layer{layer}": scores for (layer, _), scores in heads.items()})
    out["heads"] = {head_name(layer, head): scores for (layer, head), scores in heads.items()}
    out.update(find_heads(heads, len(patterns)))
    return out


@torch.no_grad()
def _batch_scores(model: nn.Module, batch: TokenBatch, task: Task | None) -> tuple[dict, torch.Tensor]:
    """(`_per_head_part` of the model on `batch` with the induction queries of `induction_targets`,
    the logits [B, T, N] on the CPU)."""
    inputs = batch.inputs.cpu()
    counter = batch_counter(batch)
    logits, patterns = head_patterns(model, inputs)
    induction = induction_targets(inputs, None if counter is None else counter.cpu(), task)
    scores = _per_head_part(
        patterns, previous_token_targets(*inputs.shape), induction, inputs, logits.argmax(dim=-1)
    )
    return scores, logits


@torch.no_grad()
def task_scores(model: nn.Module, task: Task, batch: TokenBatch) -> dict:
    """Scores of every head on a batch of `task` (and of every layer, one head per layer), the
    previous-token and induction heads found (`find_heads`), and `metrics`: the task's headline
    metrics on the batch (`Task.headline`, named without their "eval/" prefix)."""
    scores, logits = _batch_scores(model, batch, task)
    values = task.metrics(logits.to(batch.tokens.device), batch)
    scores["metrics"] = {name.removeprefix("eval/"): values[name] for name in task.headline}
    scores["n_sequences"] = batch.inputs.shape[0]
    return scores


@torch.no_grad()
def triggered_bigram_scores(model: nn.Module, batch: Batch) -> dict:
    """Scores of every head on a triggered-bigram batch (and of every layer, one head per layer),
    the previous-token and induction heads found (`find_heads`), and the in-context accuracy."""
    scores, logits = _batch_scores(model, batch, None)
    predictions = logits.argmax(dim=-1)
    in_context = batch.counter.cpu() >= 2
    correct = predictions == batch.targets.cpu()
    scores["icl_acc"] = correct[in_context].float().mean().item() if in_context.any() else float("nan")
    scores["n_sequences"] = batch.inputs.shape[0]
    return scores


@torch.no_grad()
def repeated_sequence_scores(model: nn.Module, half_len: int, batch_size: int = 32, seed: int = 0) -> dict:
    """Scores of every layer on [x_1..x_n, x_1..x_n] with uniform random tokens x_i.

    `induction` is the prefix-matching score; `repeat_acc` is the accuracy of predicting x_{i+1}
    on the second half, the usual induction-head behaviour test.
    """
    vocab_size = model.cfg.d_vocab
    tokens = repeated_random_tokens(batch_size, half_len, vocab_size, seed)
    logits, patterns = head_patterns(model, tokens)
    predictions = logits.argmax(dim=-1)
    induction = repeated_sequence_targets(batch_size, half_len)
    scores = _per_head_part(patterns, previous_token_targets(*tokens.shape), induction, tokens, predictions)
    # the prediction at second-half position t should be the token at t + 1 = tokens[t - n + 1]
    second_half = predictions[:, half_len:-1]
    scores["repeat_acc"] = (second_half == tokens[:, half_len + 1 :]).float().mean().item()
    scores["half_len"] = half_len
    scores["n_sequences"] = batch_size
    return scores


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def typical_sequence(
    batch: TokenBatch, max_positions: int | None = None, min_repeats: int = 2, task: Task | None = None
) -> int:
    """The index of a typical sequence of `batch` to show: no trigger whose output is itself (that
    trigger is then followed by itself to the end of the sequence: "; ; ; ;"), at least
    `min_repeats` repeated occurrences (the induction queries of `induction_targets`: counter >= 2
    for triggered-bigram) among the first `max_positions` positions, and among those the one whose
    count of repeated occurrences is the median's (the lowest index on ties). Falls back to the
    sequences without a self-output, then to all."""
    counter = batch_counter(batch)
    repeated = induction_targets(batch.inputs, counter, task)[1]
    repeats = (repeated if max_positions is None else repeated[:, :max_positions]).sum(dim=1).cpu()
    if counter is None:  # no triggers, so no trigger followed by itself
        self_output = torch.zeros(batch.inputs.shape[0], dtype=torch.bool)
    else:
        self_output = (batch.outputs == batch.triggers).any(dim=1).cpu()
    for keep in (~self_output & (repeats >= min_repeats), ~self_output, torch.ones_like(self_output)):
        candidates = torch.nonzero(keep).flatten()
        if len(candidates):
            break
    median = repeats[candidates].median()
    return int(candidates[(repeats[candidates] - median).abs().argmin()])


def display_char(char: str) -> str:
    """A tick label that shows whitespace."""
    return {" ": "␣", "\n": "\\n", "\t": "\\t"}.get(char, char)


def token_labels(stats: CorpusStats | None, tokens: torch.Tensor) -> list[str]:
    """Labels of the tokens [T]: their characters with corpus statistics (triggered-bigram),
    their ids without (a task whose tokens are states, as markov-icl's)."""
    if stats is None:
        return [str(token) for token in tokens.tolist()]
    return [display_char(c) for c in stats.decode(tokens)]


def _sequence_roles(inputs: torch.Tensor, triggers: torch.Tensor) -> tuple[list[bool], list[bool]]:
    """(is trigger, is output) per position of one sequence: outputs directly follow a trigger."""
    is_trigger = torch.isin(inputs, triggers)
    is_output = torch.zeros_like(is_trigger)
    is_output[1:] = is_trigger[:-1]
    return is_trigger.tolist(), is_output.tolist()


TRIGGER_COLOR = "tab:red"
OUTPUT_COLOR = "tab:blue"


def save_attention_heatmaps(
    model: nn.Module,
    stats: CorpusStats | None,
    batch: TokenBatch,
    out_dir: Path,
    *,
    step: int | None = None,
    index: int = 0,
    max_positions: int | None = 64,
    task: Task | None = None,
) -> list[Path]:
    """One PNG per head of the attention of sequence `index` of `batch`: tokens as tick labels
    (`token_labels`), triggers red and outputs blue (a batch with triggers), expected induction
    targets circled (`induction_targets`, `task` naming its ideal pattern). Returns the PNG paths:
    attention_layer{L}.png with one head per layer, attention_layer{L}_head{H}.png otherwise.

    `max_positions` keeps the first positions only, so that the characters stay readable (causal
    attention: the top-left block of the pattern is exactly the pattern of the shorter prefix).
    """
    # Figure without pyplot: no global state, no GUI backend, safe inside a training loop
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    if not 0 <= index < batch.tokens.shape[0]:
        raise ValueError(f"sequence index {index} is out of range for a batch of {batch.tokens.shape[0]}")
    inputs = batch.inputs[index].cpu()
    T = inputs.shape[0] if max_positions is None else min(max_positions, inputs.shape[0])
    inputs = inputs[:T]
    counter = batch_counter(batch)
    counter = None if counter is None else counter[index, :T].cpu().unsqueeze(0)
    _, patterns = head_patterns(model, inputs.unsqueeze(0))
    labels = token_labels(stats, inputs)
    triggers = getattr(batch, "triggers", None)  # a MemoryTask batch's triggers (triggered-bigram)
    if triggers is None:
        is_trigger = is_output = [False] * T
    else:
        is_trigger, is_output = _sequence_roles(inputs, triggers[index].cpu())
    targets, valid = induction_targets(inputs.unsqueeze(0), counter, task)
    queries = torch.nonzero(valid[0]).flatten()
    keys = targets[0, queries]

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if step is None else f"_step{step:06d}"
    size = max(5.0, 0.14 * T + 1.5)
    font = 7 if T <= 64 else 4
    paths = []
    n_heads = patterns[0].shape[1]
    heads = [(layer, head) for layer in range(1, len(patterns) + 1) for head in range(n_heads)]
    for layer, head in heads:
        fig = Figure(figsize=(size + 1.2, size))
        ax = fig.add_subplot()
        pattern = patterns[layer - 1][0, head]
        image = ax.imshow(pattern.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attention")
        if len(queries):
            ax.scatter(
                keys.numpy(),
                queries.numpy(),
                s=40,
                facecolors="none",
                edgecolors="white",
                linewidths=0.8,
                label=f"induction target (after the previous {'trigger' if counter is not None else 'occurrence'})",
            )
            ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
        ticks = list(range(T))
        ax.set_xticks(ticks, labels, fontsize=font, family="monospace")
        ax.set_yticks(ticks, labels, fontsize=font, family="monospace")
        for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for pos, label in enumerate(axis_labels):
                if is_trigger[pos]:
                    label.set_color(TRIGGER_COLOR)
                    label.set_fontweight("bold")
                elif is_output[pos]:
                    label.set_color(OUTPUT_COLOR)
                    label.set_fontweight("bold")
        ax.set_xlabel("key position (attended to)")
        ax.set_ylabel("query position")
        when = "" if step is None else f", step {step}"
        which = f"layer {layer}" if n_heads == 1 else f"layer {layer} head {head}"
        roles = "" if triggers is None else " (triggers red, outputs blue)"
        ax.set_title(f"{which} attention{when}{roles}")
        fig.tight_layout()
        name = f"attention_layer{layer}" if n_heads == 1 else f"attention_layer{layer}_head{head}"
        path = out_dir / f"{name}{suffix}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _circuitsvis_bundle() -> str:
    """circuitsvis' bundled browser build, ready to inline in a <script> element."""
    import circuitsvis

    bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not bundle.is_file():
        raise FileNotFoundError(f"circuitsvis ships no local bundle at {bundle}")
    js = bundle.read_text(encoding="utf-8")
    # a literal closing tag would end the inline script early; the source map is not shipped inline
    return js.replace("</script>", "<\\/script>").replace("//# sourceMappingURL=iife.js.map", "")


def save_attention_html(
    model: nn.Module,
    stats: CorpusStats | None,
    batch: TokenBatch,
    path: Path,
    *,
    index: int = 0,
    max_positions: int | None = None,
) -> Path:
    """A self-contained HTML page (circuitsvis `AttentionHeads`, its JavaScript inlined) that shows
    every layer's attention on sequence `index` of `batch` (tokens as `token_labels`); it opens
    offline, with no CDN."""
    import html
    import json
    import uuid

    inputs = batch.inputs[index].cpu()
    if max_positions is not None:
        inputs = inputs[:max_positions]
    _, patterns = head_patterns(model, inputs.unsqueeze(0))
    attention = torch.cat([p[0] for p in patterns])  # [layers x heads, query, key]
    n_heads = patterns[0].shape[1]
    names = [
        f"layer {layer}" if n_heads == 1 else f"layer {layer} head {head}"
        for layer in range(1, len(patterns) + 1)
        for head in range(n_heads)
    ]
    props = {
        # 4 decimals: the page stays small and the colours are unchanged
        "attention": attention.round(decimals=4).tolist(),
        "tokens": token_labels(stats, inputs),
        "attentionHeadNames": names,
        "maskUpperTri": True,
    }
    if getattr(batch, "triggers", None) is None:  # no triggers: a repeated token's earlier followers
        about = (
            "Layer 1 should attend to the previous token; layer 2, at a token seen before, to the "
            "tokens that followed its earlier occurrences."
        )
    else:
        triggers = token_labels(stats, batch.triggers[index].cpu())
        outputs = token_labels(stats, batch.outputs[index].cpu())
        pairs = ", ".join(f"{q} → {o}" for q, o in zip(triggers, outputs))
        about = (
            f"Triggers → outputs of this sequence: {html.escape(pairs)}. Layer 1 should attend to the "
            "previous token; layer 2, at a repeated trigger, to the token after its previous occurrence."
        )
    props_js = json.dumps(props).replace("</", "<\\/")  # "</" would close the inline script
    element = f"circuits-vis-{uuid.uuid4().hex[:12]}"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>birth: attention of sequence {index}</title>
</head>
<body style="font-family: sans-serif">
<h2>Attention of sequence {index} ({len(patterns)} layer{"s" if len(patterns) > 1 else ""})</h2>
<p>{about}</p>
<div id="{element}" style="margin: 15px 0;"></div>
<script>
{_circuitsvis_bundle()}
CircuitsVis.render("{element}", CircuitsVis.AttentionHeads, {props_js});
</script>
</body>
</html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
