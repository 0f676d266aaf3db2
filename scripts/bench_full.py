"""Benchmark: one training step of the full model through TransformerLens against plain eager PyTorch.

A step is what a run of the full preset does: sample a triggered-bigram batch, forward, the loss on
all tokens, backward, AdamW. Two models of the same architecture and the same weights:

- `tl`: `birth.models.transformer.build_model(FULL_MODEL)` called as `model(tokens)` (the TransformerBridge with its
  hook points, nothing hooked);
- `plain`: the same transformer written below in plain PyTorch (nn.Linear, nn.LayerNorm, explicit
  softmax attention, as the reference code), the TL weights copied in;
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
import dataclasses
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import step_seed
from birth.models.transformer import (
    FULL_MODEL,
    attn_linear,
    build_model,
    layer_norm,
    mlp_linear,
    native,
    trainable_parameters,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TaskConfig, TriggeredBigram

# the reference optimizer of the full model
LR, WEIGHT_DECAY, BETAS = 0.01, 0.01, (0.9, 0.99)


class PlainBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then + MLP(LN(x)); no biases."""

    def __init__(self, d: int, n_heads: int, d_mlp: int, sdpa: bool) -> None:
        super().__init__()
        self.n_heads, self.sdpa = n_heads, sdpa
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.fc_in, self.fc_out = nn.Linear(d, d_mlp, bias=False), nn.Linear(d_mlp, d, bias=False)

    def forward(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        h = self.ln1(x)
        q, k, v = (lin(h).view(B, T, self.n_heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            out = scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v
        x = x + self.o(out.transpose(1, 2).reshape(B, T, d))
        return x + self.fc_out(F.relu(self.fc_in(self.ln2(x))))


class PlainTransformer(nn.Module):
    def __init__(self, vocab: int, n_ctx: int, d: int, n_layers: int, n_heads: int, d_mlp: int, sdpa: bool):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(n_ctx, d)
        self.blocks = nn.ModuleList(PlainBlock(d, n_heads, d_mlp, sdpa) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("future", torch.ones(n_ctx, n_ctx, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x, self.future[:T, :T])
        return self.head(self.ln_f(x))


@torch.no_grad()
def copy_weights(tl: nn.Module, plain: PlainTransformer) -> None:
    nm = native(tl)
    plain.tok.weight.copy_(nm.tok_embed.weight)
    plain.pos.weight.copy_(nm.pos.weight)
    plain.head.weight.copy_(nm.head.weight)
    plain.ln_f.load_state_dict(layer_norm(tl, None).state_dict())
    for i, block in enumerate(plain.blocks):
        for name in "qkvo":
            getattr(block, name).weight.copy_(attn_linear(tl, i, name).weight)
        block.fc_in.weight.copy_(mlp_linear(tl, i, "in").weight)
        block.fc_out.weight.copy_(mlp_linear(tl, i, "out").weight)
        block.ln1.load_state_dict(layer_norm(tl, i, "ln1").state_dict())
        block.ln2.load_state_dict(layer_norm(tl, i, "ln2").state_dict())


def loss_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())  # loss on all tokens


def check_equal(tl: nn.Module, plain: nn.Module, tokens: torch.Tensor) -> float:
    """Largest logit difference; raises if logits or gradients differ beyond float32 noise."""
    diff = (tl(tokens[:, :-1]) - plain(tokens[:, :-1])).abs().max().item()
    if diff > 1e-3:
        raise SystemExit(f"the models disagree: max |logit difference| = {diff:.2e}")
    g_tl = torch.autograd.grad(loss_of(tl, tokens), attn_linear(tl, 0, "q").weight)[0]
    g_plain = torch.autograd.grad(loss_of(plain, tokens), plain.blocks[0].q.weight)[0]
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
    for name, sdpa in kinds.items():
        plain = PlainTransformer(
            N, T, config.d_model, config.n_layers, config.n_heads, config.mlp_width * config.d_model, sdpa
        )
        copy_weights(models["tl"], plain)
        models[name] = plain
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
