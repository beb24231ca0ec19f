"""The one training loop of every stage (`tmrender train STAGE`), cf. nanoGPT's `train.py`.

A stage module supplies a `Stage`: its networks, the parameters of each optimizer, which
optimizers to update at a step, its batches, a pure loss per optimizer, held-out figures
and an export. `run_stage` does everything else: seeding, AdamW per optimizer, the lr
schedule (linear warm-up, cosine decay), bf16 autocast on CUDA, gradient clipping, the JSONL
log, the loss-curve PNG, atomic checkpoints, bit-identical `resume`, `max_minutes`,
validation and the final export.

Run folder:
    checkpoint.pt      networks, optimizers, step, RNG states, options (atomic)
    checkpoint.sharded/  instead, on several ranks: the same as a DCP folder (see below)
    log.jsonl          one JSON line per logged step ({"step", "lr", "seconds", "loss", ...})
                       and per validation ({"step", "val": {...}})
    loss.png           training losses and validation figures, redrawn at each checkpoint
    export.safetensors what `Stage.export` writes at the end

Steps: `step` counts loop iterations; iteration `s` runs the updates `stage.updates(s)`
names (each on a fresh batch), all at the lr of step `s`; `opts.steps` iterations in all.
Randomness: `stage.batch` gets a CPU `torch.Generator` seeded from `opts.seed` (draw random
numbers with it on the CPU, then move them); its state, the global torch RNG states and
the optimizers are saved in the checkpoint, so a resumed run is the uninterrupted run.

Several ranks (`tmrender.train.distributed`): under torchrun the DiT stages (teacher, ode,
dmd) train data-parallel with FSDP2,

    torchrun --standalone --nproc-per-node 2 -m tmrender train teacher --data D --init I ...

(or `torchrun ... $(which tmrender) train ...`; `--device cuda` puts each rank on the GPU
of its LOCAL_RANK). `run_stage` asks `distributed.parallel` for this process's `Parallel`
and goes through it for the networks (sharded before the optimizers are built), each
batch (every rank draws the global batch, keeps its rows), the logged figures (averaged
over the ranks), stopping (together), checkpoints (`checkpoint.sharded/`, readable on any
number of ranks; `checkpoint.pt` is read onto several ranks too) and the export (rank 0;
logging and the curve too). Outside torchrun it is world size 1: every one of those steps
is the identity and a run is exactly the one-process run. `checkpoint_blocks` recomputes
each DiT block's activations in the backward pass, on any number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from tmrender.devices import resolve_device
from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.train import distributed
from tmrender.train.distributed import Parallel

CHECKPOINT = "checkpoint.pt"
SHARDED = "checkpoint.sharded"
LOG = "log.jsonl"
LOSS_PNG = "loss.png"
EXPORT = "export.safetensors"


@dataclass(frozen=True)
class LoopOptions:
    """Options of one training run, shared by every stage."""

    # schedule
    steps: int = 1000  # loop iterations = updates of the main optimizer ("steps")
    lr: float = 1e-3  # peak lr; linear warm-up then cosine to lr * min_lr_ratio
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm per optimizer; 0 = off
    # wall time and bookkeeping
    max_minutes: float = 0.0  # stop cleanly (checkpoint + export) after this; 0 = off
    checkpoint_every: int = 200
    log_every: int = 20
    val_every: int = 200  # 0 = only at the end
    # machine
    seed: int = 0
    threads: int = 2  # torch CPU threads
    device: str = "cpu"  # auto | cpu | cuda | cuda:N ; bf16 autocast on CUDA
    checkpoint_blocks: bool = False  # recompute DiT block activations in backward (memory)


@dataclass(frozen=True)
class Schedule:
    """A stage's own loop defaults: those of `tmrender train STAGE` (the shipped recipe)."""

    steps: int
    lr: float
    val_every: int


SCHEDULES: dict[str, Schedule] = {
    "vae": Schedule(steps=3000, lr=2e-3, val_every=500),
    "audio": Schedule(steps=3000, lr=2e-3, val_every=250),
    "teacher": Schedule(steps=3000, lr=5e-4, val_every=250),
    "ode": Schedule(steps=2000, lr=2e-4, val_every=250),
    "dmd": Schedule(steps=600, lr=1e-4, val_every=100),  # steps = generator updates
}


def loop_options(schedule: Schedule, **given: Any) -> LoopOptions:
    """The loop's options of a stage run: `schedule`, then `given` (any LoopOptions field:
    max_minutes, seed, threads, device, ...). Unless given, the warm-up is a tenth of the
    steps (at least 1, at most 200), checkpoints come every quarter of the steps (at most
    every 500) and log rows every twentieth (at most every 50)."""
    steps = schedule.steps
    derived = {
        "warmup": min(200, max(1, steps // 10)),
        "checkpoint_every": max(1, min(500, steps // 4)),
        "log_every": max(1, min(50, steps // 20)),
    }
    return LoopOptions(**{**derived, **asdict(schedule), **given})


class Stage(Protocol):
    """What a training stage supplies to `run_stage` (see the module docstring)."""

    name: str

    def networks(self) -> dict[str, nn.Module]:
        """Every network saved in the training checkpoint (frozen ones included)."""
        ...

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimizer name; the first name is the main optimizer."""
        ...

    def updates(self, step: int) -> list[str]:
        """Optimizer names to update at `step`, in order (usually `[main]`)."""
        ...

    def batch(self, gen: torch.Generator, device: torch.device) -> Any:
        """One training batch on `device`; randomness drawn from the CPU generator `gen`."""
        ...

    def loss(self, opt_name: str, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss to minimise for optimizer `opt_name`, and figures to log (floats, or
        0-dim tensors: those are averaged on the device and read once per log row)."""
        ...

    def validate(self) -> dict[str, float]:
        """Held-out figures (on held-out train clips); runs under no_grad in eval mode."""
        ...

    def export(self, path: Path) -> dict:
        """Write the stage's result (safetensors) to `path`; returns its metadata."""
        ...


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global torch RNG seeded to `seed`, restoring the previous RNG
    state afterwards: stages build their networks under it, so that a run's initial
    weights depend on its seed only (the loop itself seeds after the stage is built)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def lr_at(step: int, opts: LoopOptions) -> float:
    """Linear warm-up over `opts.warmup` steps, then cosine decay from `opts.lr` to
    `opts.lr * opts.min_lr_ratio` at `opts.steps`."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = min(1.0, (step - opts.warmup) / max(1, opts.steps - opts.warmup))
    floor = opts.min_lr_ratio
    return opts.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def format_log_row(row: dict) -> str:
    """One line for a log row: "step S: loss 0.1234, ... (T s)" or "step S: validation ..."."""
    if "val" in row:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in row["val"].items())
        return f"step {row['step']}: validation {figures}"
    skip = ("step", "seconds")
    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k not in skip)
    return f"step {row['step']}: {figures} ({row['seconds']} s)"


def print_log(row: dict) -> None:
    """Default `on_log`: one line per log row."""
    print(format_log_row(row), flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_stage(
    stage: Stage,
    out_dir: Path,
    opts: LoopOptions,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = print_log,
) -> dict:
    """Train `stage` into the run folder `out_dir` (or continue it with `resume`).

    Returns the final figures: {"step", "minutes", "stopped_early", "val": stage.validate(),
    "export": stage.export(...)'s metadata}.
    """
    if opts.steps < 1:
        raise UserInputError("--steps must be at least 1")
    opts = replace(opts, device=str(resolve_device(opts.device)))  # "auto": CUDA if present
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        return _run(stage, Path(out_dir), opts, resume, on_log or (lambda row: None))
    finally:
        torch.set_num_threads(previous_threads)


def _run(stage: Stage, out: Path, opts: LoopOptions, resume: bool, on_log) -> dict:
    par = distributed.parallel(opts.device)  # world size 1 outside torchrun
    out.mkdir(parents=True, exist_ok=True)
    device = _device(opts.device)
    log = _Log(out / LOG, on_log, enabled=par.main)
    # 1. networks on the device (sharded on several ranks), one AdamW per optimizer name,
    #    seeded generators
    torch.manual_seed(opts.seed)
    nets = stage.networks()
    for net in nets.values():
        net.to(device)
    trained = {id(p) for params in stage.optimizers().values() for p in params}
    par.parallelize(nets, trained, opts.checkpoint_blocks)
    groups = stage.optimizers()
    optimizers = {
        name: torch.optim.AdamW(
            params,
            lr=opts.lr,
            betas=(0.9, 0.99),
            weight_decay=opts.weight_decay,
            fused=device.type == "cuda" or None,  # one kernel for all parameters on CUDA
        )
        for name, params in groups.items()
    }
    gen = torch.Generator().manual_seed(opts.seed)
    # 2. resume: restore everything the next step depends on; else start a fresh log
    step = 0
    if resume:
        step = _resume(out, nets, optimizers, gen, device, par)
        log.truncate_after(step)
    else:
        log.clear()
    _set_train_modes(nets, groups)
    # 3. loop: updates, logging, validation, checkpoints; stop at opts.steps or max_minutes
    start = time.perf_counter()
    window = _Window()
    stopped_early = False
    val: dict[str, float] = {}
    while step < opts.steps:
        lr = lr_at(step, opts)
        for name in stage.updates(step):
            loss, figures = _update(stage, nets, name, optimizers[name], lr, gen, opts, par)
            window.add(name, loss, figures, main=name == next(iter(groups)))
        step += 1
        seconds = time.perf_counter() - start
        if step % opts.log_every == 0 or step == opts.steps:
            row = window.pop(par.mean)
            log.write({"step": step, "lr": lr, "seconds": round(seconds, 1), **row})
        stopped_early = bool(opts.max_minutes) and par.any(seconds > opts.max_minutes * 60)
        if stopped_early and step < opts.steps:
            break
        if opts.val_every and step % opts.val_every == 0 and step < opts.steps:
            val = _validate(stage, nets, groups, step, log)
        if step % opts.checkpoint_every == 0 and step < opts.steps:
            _checkpoint(out, stage, nets, optimizers, gen, step, opts, par)
    # 4. the end (or the clock): validation, checkpoint, curve, export
    if window.count:
        row = {"step": step, "lr": lr_at(step - 1, opts), **window.pop(par.mean)}
        log.write({**row, "seconds": round(time.perf_counter() - start, 1)})
    val = _validate(stage, nets, groups, step, log)
    _checkpoint(out, stage, nets, optimizers, gen, step, opts, par)
    for net in nets.values():
        net.eval()
    with par.full_state_dicts(nets):
        meta = par.on_main(lambda: stage.export(out / EXPORT))
    minutes = round((time.perf_counter() - start) / 60, 2)
    return {"step": step, "minutes": minutes, "stopped_early": stopped_early, "val": val,
            "export": meta}  # fmt: skip


def _device(name: str) -> torch.device:
    """The torch device of a name `resolve_device` has checked."""
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # batches keep their shapes: time the kernels once
    return device


def _set_train_modes(nets: dict[str, nn.Module], groups: dict[str, list[nn.Parameter]]) -> None:
    """Train mode for networks that any optimizer updates, eval mode for frozen ones."""
    trained = {id(p) for params in groups.values() for p in params}
    for net in nets.values():
        net.train(any(id(p) in trained for p in net.parameters()))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _update(
    stage: Stage,
    nets: dict[str, nn.Module],
    name: str,
    optimizer: torch.optim.Optimizer,
    lr: float,
    gen: torch.Generator,
    opts: LoopOptions,
    par: Parallel,
) -> tuple[Tensor, dict[str, float]]:
    """One update of optimizer `name` on a fresh batch (this rank's rows of it); returns
    (detached loss, figures)."""
    device = torch.device(opts.device)
    batch = par.split(stage.batch(gen, device))
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(device):
        loss, figures = stage.loss(name, batch)
    for net in nets.values():  # a loss may reach other optimizers' parameters too
        net.zero_grad(set_to_none=True)
    loss.backward()
    if opts.grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().float(), figures


class _Window:
    """Means of the losses and figures since the last log row (losses stay on the device
    until then, so logging costs one synchronisation per row)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.count = 0

    def add(self, name: str, loss: Tensor, figures: dict[str, float], main: bool) -> None:
        prefix = "" if main else f"{name}_"
        self._add(f"{prefix}loss", loss)
        for key, value in figures.items():
            self._add(f"{prefix}{key}", value)
        self.count += 1

    def _add(self, key: str, value: Any) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self, mean_over_ranks: Callable[[list[float]], list[float]]) -> dict[str, float]:
        means = mean_over_ranks([float(v) / self.counts[k] for k, v in self.sums.items()])
        row = {k: round(m, 6) for k, m in zip(self.sums, means, strict=True)}
        self.__init__()
        return row


@torch.no_grad()
def _validate(stage: Stage, nets, groups, step: int, log: _Log) -> dict[str, float]:
    """stage.validate() in eval mode without gradients, logged as {"step", "val"}."""
    for net in nets.values():
        net.eval()
    val = stage.validate()
    _set_train_modes(nets, groups)
    log.write({"step": step, "val": val})
    return val


# -- checkpoints -----------------------------------------------------------------------------


def _checkpoint(
    out: Path,
    stage: Stage,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    gen: torch.Generator,
    step: int,
    opts: LoopOptions,
    par: Parallel,
) -> None:
    """The run's checkpoint (`checkpoint.pt` on one rank, `checkpoint.sharded/` on several;
    the other kind is removed) and the loss curve."""
    extra = _run_state(stage, gen, step, opts)
    if par.world == 1:
        _save_checkpoint(out / CHECKPOINT, nets, optimizers, extra)
        shutil.rmtree(out / SHARDED, ignore_errors=True)
    else:
        par.save(out / SHARDED, nets, optimizers, extra)
        if par.main:
            (out / CHECKPOINT).unlink(missing_ok=True)
    if par.main:
        plot_log(out / LOG, out / LOSS_PNG, stage.name)


def _resume(
    out: Path,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    gen: torch.Generator,
    device: torch.device,
    par: Parallel,
) -> int:
    """Restore the run folder's checkpoint in place; returns its step. One process reads
    `checkpoint.pt` as it always has; a sharded checkpoint (on any number of ranks) and
    `checkpoint.pt` onto several ranks go through `tmrender.train.distributed`."""
    if par.world == 1 and not (out / SHARDED).is_dir():
        return _load_checkpoint(out / CHECKPOINT, nets, optimizers, gen, device)
    template = {**_rng_state(gen), "step": 0}
    if (out / SHARDED).is_dir():
        state = distributed.load_sharded(out / SHARDED, nets, optimizers, template)
    else:
        state = distributed.load_full(out / CHECKPOINT, nets, optimizers, template)
    _set_rng_state(gen, state)
    return int(state["step"])


def _rng_state(gen: torch.Generator) -> dict[str, Tensor]:
    return {"generator": gen.get_state(), "torch_rng": torch.get_rng_state()}


def _set_rng_state(gen: torch.Generator, state: dict[str, Tensor]) -> None:
    """Restore what `_rng_state` captured."""
    gen.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())


def _run_state(stage: Stage, gen: torch.Generator, step: int, opts: LoopOptions) -> dict:
    """What every checkpoint holds besides networks and optimizers."""
    return {"stage": stage.name, **_rng_state(gen), "step": step, "options": asdict(opts)}


def _save_checkpoint(
    path: Path,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any],
) -> None:
    """Atomically write networks, optimizers and `extra` (`_run_state`: step, RNG states,
    options), as `Parallel.save` does on several ranks."""
    state = {
        **extra,
        "networks": {name: net.state_dict() for name, net in nets.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_write(path) as partial:
        torch.save(state, partial)


def _load_checkpoint(
    path: Path,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    gen: torch.Generator,
    device: torch.device,
) -> int:
    """Restore a checkpoint written by `_save_checkpoint` in place; returns its step."""
    if not path.exists():
        raise UserInputError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=False)
    missing = set(nets) ^ set(state["networks"]) or set(optimizers) ^ set(state["optimizers"])
    if missing:
        raise UserInputError(f"{path} belongs to another stage (differs in {sorted(missing)})")
    for name, net in nets.items():
        net.load_state_dict(state["networks"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    _set_rng_state(gen, state)
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return int(state["step"])


def load_training_networks(path: Path) -> dict[str, dict[str, Tensor]]:
    """State dicts of the networks in a training checkpoint, by network name (on the CPU)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)["networks"]


def restore_networks(stage: Stage, out: Path, device: str = "cpu") -> None:
    """Give `stage`'s networks the weights of the run folder's checkpoint, in eval mode on
    `device`: figures of a trained run without training (`--test-only`)."""
    path = Path(out) / CHECKPOINT
    if not path.exists():
        raise UserInputError(f"no checkpoint in {out}; train first")
    states = load_training_networks(path)
    for name, net in stage.networks().items():
        net.load_state_dict(states[name])
        net.to(resolve_device(device)).eval()


def copy_export(out: Path, path: Path) -> None:
    """Copy the run folder's export (`EXPORT`) to `path`, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(out) / EXPORT, path)


# -- log and loss curve ----------------------------------------------------------------------


class _Log:
    """Append-only JSONL log that also reports every row to `on_log` (does nothing when
    not `enabled`: on ranks other than 0)."""

    def __init__(self, path: Path, on_log: Callable[[dict], None], enabled: bool = True) -> None:
        self.path = path
        self.on_log = on_log
        self.enabled = enabled

    def clear(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop rows written after the checkpoint at `step` (a run killed after it)."""
        if self.enabled and self.path.exists():
            rows = _read_rows(self.path)
            kept = [json.dumps(r) + "\n" for r in rows if r["step"] <= step]
            with atomic_write(self.path) as partial:
                partial.write_text("".join(kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.on_log(row)


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _iter_series(rows: list[dict]) -> Iterator[tuple[str, list[int], list[float]]]:
    """(name, steps, values) of every numeric training figure whose name holds 'loss'."""
    keys = sorted({k for r in rows for k in r if "loss" in k})
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            yield key, [p[0] for p in points], [p[1] for p in points]


def _iter_val_series(rows: list[dict]) -> Iterator[tuple[str, list[int], list[float]]]:
    """(name, steps, values) of every float validation figure (counts are left out)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["val"]))
    for key in keys:
        points = [(r["step"], r["val"].get(key)) for r in rows]
        points = [(s, v) for s, v in points if isinstance(v, float)]
        if points:
            yield key, [p[0] for p in points], [p[1] for p in points]


def plot_log(log_path: Path, png: Path, title: str) -> None:
    """Training losses (log scale where positive) and validation figures, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_rows(log_path) if log_path.exists() else []
    train_rows = [r for r in rows if "val" not in r]
    val_rows = [r for r in rows if "val" in r]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    positive = True
    for key, steps, values in _iter_series(train_rows):
        ax_loss.plot(steps, values, label=key)
        positive = positive and min(values) > 0
    if positive:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="training loss", title=title)
    ax_unit = ax_val.twinx()  # figures within [-1, 1] (correlations, ratios) on the right
    for key, steps, values in _iter_val_series(val_rows):
        ax = ax_unit if max(abs(v) for v in values) <= 1 else ax_val
        ax.plot(
            steps, values, marker="o", label=key, color=f"C{len(ax_val.lines) + len(ax_unit.lines)}"
        )
    ax_val.set(xlabel="step", ylabel="validation", title=f"{title}: held-out figures")
    ax_unit.set(ylabel="validation (within [-1, 1])")
    if not ax_val.lines:  # every figure is on the right: an empty left scale only misleads
        ax_val.yaxis.set_visible(False)
    for ax in (ax_loss, ax_val, ax_unit):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left" if ax is ax_val else "lower right")
    fig.tight_layout()
    with atomic_write(png) as partial:
        fig.savefig(partial, dpi=100, format="png")
    plt.close(fig)
