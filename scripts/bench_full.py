"""Benchmark: one training step of the full model through TransformerLens against plain eager PyTorch.

A step is what a run of the full preset does: sample a triggered-bigram batch, forward, the loss on
all tokens, backward, AdamW. Two models of the same architecture and the same weights:

- `tl`: `birth.models.transformer.build_model(FULL_MODEL)` called as `model(tokens)` (the TransformerBridge with its
  hook points, nothing hooked);
- `plain`: the same transformer in plain PyTorch, the package's reference architecture
  (`birth.models.reference.ReferenceTransformer`: nn.Linear, nn.LayerNorm, explicit softmax
  attention, as the reference code), on a copy of the TL weights;
- `plain-sdpa`: the plain model with fused scaled_dot_product_attention, the kernel the TL model's
  attention runs when no hook reads its pattern (`birth.models.transformer`): the same computation.

The script first checks that the models agree (logits and gradients), then alternates their steps
on the same batches, so that all see the same machine load, and prints the median wall and CPU
time per step and the ratios. Measured numbers are in docs/model.md.

    python scripts/bench_full.py                       # d=128, T=128, batch 64 (the CPU size measured)
    python scripts/bench_full.py --reference           # the reference size: d=128, T=256, batch 64
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import step_seed
from birth.models.reference import CausalSelfAttention
from birth.models.transformer import (
    FULL_MODEL,
    ReferenceTransformer,
    attn_linear,
    build_model,
    trainable_parameters,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TaskConfig, TriggeredBigram

# the reference optimizer of the full model
LR, WEIGHT_DECAY, BETAS = 0.01, 0.01, (0.9, 0.99)


class FusedAttention(CausalSelfAttention):
    """The reference attention with fused scaled_dot_product_attention instead of the explicit
    mask + softmax (the kernel the TL model's attention runs when no hook reads its pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (
            lin(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2) for lin in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / self.scale)
        return self.o(out.transpose(1, 2).reshape(B, T, d))


def plain_copy(tl: nn.Module, fused: bool) -> ReferenceTransformer:
    """The reference architecture (`birth.models.reference`) on a copy of `tl`'s weights (its own
    tensors: each model trains by itself), with fused attention if `fused`."""
    plain = copy.deepcopy(ReferenceTransformer.from_bridge(tl))
    if fused:
        for block in plain.blocks:
            block.attn.__class__ = FusedAttention  # same parameters, the fused kernel
    return plain


def loss_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())  # loss on all tokens


def check_equal(tl: nn.Module, plain: nn.Module, tokens: torch.Tensor) -> float:
    """Largest logit difference; raises if logits or gradients differ beyond float32 noise."""
    diff = (tl(tokens[:, :-1]) - plain(tokens[:, :-1])).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"the models disagree: max |logit difference| = {diff:.2e}")
    g_tl = torch.autograd.grad(loss_of(tl, tokens), attn_linear(tl, 0, "q").weight)[0]
    g_plain = torch.autograd.grad(loss_of(plain, tokens), plain.blocks[0].attn.q.weight)[0]
    if not torch.allclose(g_tl, g_plain, rtol=1e-3, atol=1e-6):
        raise SystemExit("the models' gradients disagree")
    return diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reference", action="store_true", help="the reference size: d=128, T=256, batch 64")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.reference:
        args.d_model, args.seq_len, args.batch_size = 128, 256, 64
    torch.set_num_threads(args.threads)

    stats = load_stats()
    task = TriggeredBigram(TaskConfig(seq_len=args.seq_len), stats)
    config = dataclasses.replace(FULL_MODEL, d_model=args.d_model)
    T, N = args.seq_len, stats.vocab_size
    models: dict[str, nn.Module] = {"tl": build_model(config, n_ctx=T, vocab_size=N, seed=0)}
    kinds = {"plain": False, "plain-sdpa": True}
    for name, fused in kinds.items():
        models[name] = plain_copy(models["tl"], fused)
    probe = task.sample(4, task.generator(12345)).tokens
    for name in kinds:
        print(f"{name} vs tl: max |logit difference| {check_equal(models['tl'], models[name], probe):.1e}")
    optimizers = {
        name: torch.optim.AdamW(
            trainable_parameters(m) if name == "tl" else list(m.parameters()),
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            betas=BETAS,
            eps=1e-8,
        )
        for name, m in models.items()
    }
    print(
        f"full model d={config.d_model}, {config.n_heads} heads, {config.n_layers} layers, T={T}, "
        f"batch {args.batch_size}, {args.threads} threads: {args.steps} timed steps per model, alternated"
    )
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        for name, model in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            batch = task.sample(args.batch_size, task.generator(step_seed(0, step)))
            loss = loss_of(model, batch.tokens)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            losses[name].append(loss.item())
            if step >= args.warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    # same weights, same batches, same optimizer: the runs stay together up to float32 noise
    drift = max(abs(a - b) for a, b in zip(losses["tl"], losses["plain"]))
    print(
        f"losses step 0 -> {len(losses['tl']) - 1}: {losses['tl'][0]:.4f} -> {losses['tl'][-1]:.4f} "
        f"(tl), max |tl - plain| {drift:.1e}"
    )
    base = statistics.median(wall["plain"])
    for name in models:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:>10}: {w * 1000:8.1f} ms/step wall, {c * 1000:8.1f} ms/step CPU, {w / base:.2f}x plain")
    tl_wall, tl_cpu = statistics.median(wall["tl"]), statistics.median(cpu["tl"])
    for name in kinds:
        print(
            f"ratio tl / {name}: {tl_wall / statistics.median(wall[name]):.2f} wall, "
            f"{tl_cpu / statistics.median(cpu[name]):.2f} CPU (target <= 1.3)"
        )


if __name__ == "__main__":
    main()
