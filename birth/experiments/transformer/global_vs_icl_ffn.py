"""`global-vs-icl-ffn`: global-vs-icl with the `simplified-ffn` preset (the simplified model plus a
trainable linear W_F after the second attention layer), with the W_F probe (KL between π_b and what
W_F alone predicts, `probes.recall.ff_bigram_kl`) next to the three memory probes: W_F stores the
bigrams while the induction memories form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from birth.base.curves import first_crossing_below
from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Positive, Train, TrainedRun
from birth.experiments.registry import register
from birth.experiments.transformer.common import (
    TOLERANCE,
    GlobalVsIclResult,
    check_global_vs_icl,
    ffn_reference,
    ffn_train,
    global_vs_icl_run,
    plot_curves,
    tiny,
)
from probes.recall import FF_PROBE, PROBES


@dataclass(frozen=True)
class GlobalVsIclFfnConfig(Validated):
    train: Train = field(default_factory=ffn_train)  # the training run (a final W_F, loss on all tokens)
    tolerance: Positive = TOLERANCE  # the bigram loss is at its floor within this fraction of it
    device: Device = "auto"  # where the run trains (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_global_vs_icl(self)
        if not self.train.model.has_final_ffn:
            raise ValueError(
                "the W_F probe needs a feed-forward layer after the last attention layer: "
                "--mlp linear (or relu) with --mlp-layers final or all"
            )


@dataclass(frozen=True)
class GlobalVsIclFfnResult(GlobalVsIclResult):
    ff_kl_start: float  # the W_F probe at step 0 (KL, nats; lower: W_F holds more of π_b)
    ff_kl_final: float  # the W_F probe at the end
    ff_kl_at_icl: float | None  # the W_F probe when in-context accuracy first reaches 0.9
    ff_half_step: int | None  # first step with the W_F probe at half its start value or below
    probe_steps: dict[str, int | None]  # first step with each memory probe >= 0.9

    def headline(self) -> str:
        memories = ", ".join(f"{k} {v}" for k, v in self.probe_steps.items())
        return (
            super().headline() + f"; W_F probe {self.ff_kl_start:.3f} → {self.ff_kl_final:.3f} (half at step "
            f"{self.ff_half_step}); memory probes at 0.9: {memories}"
        )


def plot_global_vs_icl_ffn(result: GlobalVsIclFfnResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3)
    plot_curves(axes[0][0], axes[0][1], result)
    run = result.run
    ax = axes[0][1]
    for name in PROBES:
        ax.plot(run.steps(), run.curve(f"probes/{name}"), lw=1, alpha=0.8, label=f"{name} probe")
    ax.legend(fontsize=7)
    ax = axes[0][2]
    ax.plot(run.steps(), run.curve(f"probes/{FF_PROBE}"), color="tab:purple")
    ax.set_xlabel("step")
    ax.set_ylabel("KL(π_b(·|k) ‖ softmax(W_U W_F w_E(k))) (nats)")
    ax.set_title("W_F probe (non-trigger tokens k)")
    axes[0][0].set_title("bigram loss and its floor")
    axes[0][1].set_title("in-context accuracy and memories")
    return save_figure(fig, out_dir, "global_vs_icl_ffn")


@register(
    "global-vs-icl-ffn",
    family="transformer",
    summary="simplified model + W_F, loss on all tokens: W_F probe falls while the induction memories form",
    config=GlobalVsIclFfnConfig,
    plot=plot_global_vs_icl_ffn,
    full=lambda: GlobalVsIclFfnConfig(train=ffn_reference()),
    small=lambda: GlobalVsIclFfnConfig(train=tiny(ffn_train()), device="cpu"),
)
def run_global_vs_icl_ffn(
    config: GlobalVsIclFfnConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GlobalVsIclFfnResult:
    fields = global_vs_icl_run(config, out_dir, "simplified-ffn", log, progress)
    run: TrainedRun = fields["run"]
    steps, kl = run.steps(), run.curve(f"probes/{FF_PROBE}")
    icl_step = fields["icl_steps"]["0.9"]
    return GlobalVsIclFfnResult(
        **fields,
        ff_kl_start=kl[0],
        ff_kl_final=kl[-1],
        ff_kl_at_icl=None if icl_step is None else kl[steps.index(icl_step)],
        ff_half_step=first_crossing_below(steps, kl, kl[0] / 2),
        probe_steps={name: run.order.get(name) for name in PROBES if name in run.order},
    )
