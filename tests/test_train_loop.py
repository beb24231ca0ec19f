"""The one training loop (tmrender.train.loop) on toy stages: a linear regression, and a
two-optimizer "critic / generator" stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tmrender.errors import UserInputError
from tmrender.train.loop import (
    LoopOptions,
    Schedule,
    copy_export,
    format_log_row,
    load_training_networks,
    loop_options,
    lr_at,
    restore_networks,
    run_stage,
)

TRUE_W = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


class Interrupted(Exception):
    """Raised by a toy stage to simulate a run killed after a given number of batches."""


class Regression:
    """Toy stage: fit y = x @ TRUE_W.T + noise with a linear layer; optionally raises
    `Interrupted` when asked for batch number `interrupt_after + 1`."""

    name = "toy"

    def __init__(self, interrupt_after: int | None = None) -> None:
        torch.manual_seed(123)
        self.model = nn.Linear(4, 1)
        self.batches = 0
        self.interrupt_after = interrupt_after

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"main": list(self.model.parameters())}

    def updates(self, step: int) -> list[str]:
        return ["main"]

    def batch(self, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.interrupt_after is not None and self.batches == self.interrupt_after:
            raise Interrupted
        self.batches += 1
        x = torch.randn(16, 4, generator=gen)
        y = x @ TRUE_W.T + 0.01 * torch.randn(16, 1, generator=gen)
        return x.to(device), y.to(device)

    def loss(self, opt_name: str, batch) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        loss = ((self.model(x) - y) ** 2).mean()
        return loss, {"abs_w": float(self.model.weight.detach().abs().mean())}

    def validate(self) -> dict[str, float]:
        return {"w_error": float((self.model.weight - TRUE_W).abs().max())}

    def export(self, path: Path) -> dict:
        save_file(self.model.state_dict(), str(path))
        return {"steps_seen": self.batches}


class CriticGenerator(Regression):
    """Two optimizers: a "critic" (its own linear layer, fitted to the generator's
    outputs) updated twice per step, then the "generator" (the regression)."""

    name = "toy2"

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(4, 1)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model, "critic": self.critic}

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {
            "generator": list(self.model.parameters()),
            "critic": list(self.critic.parameters()),
        }

    def updates(self, step: int) -> list[str]:
        return ["critic", "critic", "generator"]

    def loss(self, opt_name: str, batch) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        if opt_name == "critic":
            return ((self.critic(x) - self.model(x)) ** 2).mean(), {}
        return super().loss(opt_name, batch)


def options(**kw) -> LoopOptions:
    base = dict(steps=40, lr=0.3, warmup=5, log_every=5, val_every=20, checkpoint_every=20,
                threads=1)  # fmt: skip
    return LoopOptions(**{**base, **kw})


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loss_goes_down_and_the_run_folder_is_complete(tmp_path):
    result = run_stage(Regression(), tmp_path, options(), on_log=None)
    losses = [r["loss"] for r in rows(tmp_path) if "loss" in r]
    assert losses[-1] < 0.05 * losses[0]
    assert result["step"] == 40 and not result["stopped_early"]
    assert result["val"]["w_error"] < 0.3
    assert result["export"] == {"steps_seen": 40}
    assert set(load_file(tmp_path / "export.safetensors")) == {"weight", "bias"}
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["step"] for r in rows(tmp_path) if "val" in r] == [20, 40]
    assert "model" in load_training_networks(tmp_path / "checkpoint.pt")


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = Regression()
    run_stage(full, tmp_path / "full", options(), on_log=None)
    killed = Regression(interrupt_after=27)  # dies between the checkpoints at 20 and 40
    with pytest.raises(Interrupted):
        run_stage(killed, tmp_path / "cut", options(), on_log=None)
    resumed = Regression()
    result = run_stage(resumed, tmp_path / "cut", options(), resume=True, on_log=None)
    assert result["step"] == 40 and resumed.batches == 20
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [r["step"] for r in rows(tmp_path / "cut")]
    assert steps == [r["step"] for r in rows(tmp_path / "full")]  # rows past 20 dropped


@pytest.mark.slow
def test_max_minutes_stops_with_checkpoint_and_export(tmp_path):
    result = run_stage(Regression(), tmp_path, options(max_minutes=1e-9), on_log=None)
    assert result["stopped_early"] and result["step"] == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 1
    assert (tmp_path / "export.safetensors").exists()
    resumed = run_stage(Regression(), tmp_path, options(steps=3), resume=True, on_log=None)
    assert resumed["step"] == 3 and not resumed["stopped_early"]


@pytest.mark.slow
def test_several_optimizers_and_updates_per_step(tmp_path):
    stage = CriticGenerator()
    printed: list[dict] = []
    run_stage(stage, tmp_path, options(steps=30), on_log=printed.append)
    assert stage.batches == 90  # 3 updates per step, each on its own batch
    last = [r for r in printed if "loss" in r][-1]
    assert {"loss", "abs_w", "critic_loss"} <= set(last)
    with torch.no_grad():
        x = torch.randn(64, 4)
        assert ((stage.critic(x) - stage.model(x)) ** 2).mean() < 0.1
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(state["optimizers"]) == {"generator", "critic"}


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError):
        run_stage(Regression(), tmp_path, options(), resume=True, on_log=None)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    opts = options(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, opts) == pytest.approx(0.1)
    assert lr_at(9, opts) == pytest.approx(1.0)
    assert lr_at(55, opts) == pytest.approx(0.55)
    assert lr_at(100, opts) == pytest.approx(0.1)


def test_loop_options_derive_warmup_checkpoints_and_log_rows_from_the_steps():
    long = loop_options(Schedule(steps=3000, lr=2e-3, val_every=500), seed=3, device="auto")
    assert (long.warmup, long.checkpoint_every, long.log_every) == (200, 500, 50)
    assert (long.steps, long.lr, long.val_every, long.seed, long.device) == (
        3000, 2e-3, 500, 3, "auto"
    )  # fmt: skip
    short = loop_options(Schedule(steps=8, lr=1e-3, val_every=0))
    assert (short.warmup, short.checkpoint_every, short.log_every) == (1, 2, 1)
    assert short.threads == LoopOptions().threads
    assert loop_options(Schedule(8, 1e-3, 0), warmup=5, grad_clip=0.0).warmup == 5


def test_device_auto_runs_on_the_machine_s_device(tmp_path):
    run_stage(Regression(), tmp_path, options(steps=2, device="auto"), on_log=None)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["options"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_restore_networks_gives_a_stage_the_run_s_weights_and_copy_export(tmp_path):
    trained = Regression()
    run_stage(trained, tmp_path / "run", options(steps=4), on_log=None)
    fresh = Regression()
    with pytest.raises(UserInputError, match="train first"):
        restore_networks(fresh, tmp_path / "nothing")
    restore_networks(fresh, tmp_path / "run")
    assert torch.equal(fresh.model.weight, trained.model.weight) and not fresh.model.training
    copy_export(tmp_path / "run", tmp_path / "stages" / "toy.safetensors")
    assert load_file(tmp_path / "stages" / "toy.safetensors").keys() == {"weight", "bias"}


def test_log_rows_read_as_one_line():
    row = {"step": 20, "lr": 0.0012345, "seconds": 1.5, "loss": 0.25}
    assert format_log_row(row) == "step 20: lr 0.001234, loss 0.25 (1.5 s)"
    assert (
        format_log_row({"step": 20, "val": {"r": 0.9, "n": 3}}) == "step 20: validation r 0.9, n 3"
    )
