"""Training recipe of the mouth reader (`tmrender train mouth-reader`).

Supervision: corpus frames of the train split and their ground-truth mouth columns
(`MouthReaderConfig.outputs`). The last `val_clips` clips of the split are held out for
validation; the test split is never read here.

Robustness to generated frames comes from augmentation of the mouth region: random
shift, scale and rotation (head placement), colour gain and offset, blur (a decoder's
softness) and pixel noise.

Run folder (git-ignored, e.g. runs/mouth_reader/):
    checkpoint.pt    model, optimizer, step, config, options: written every
                     `checkpoint_every` steps (atomically); `resume` continues from it
    log.jsonl        one JSON line per logged step (loss, lr) and per validation
    loss.png         the loss curve and the validation Pearson r, redrawn at each checkpoint
    regions-*.npz    the cached input regions of the split (rebuilt when missing)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tmrender.data.corpus import list_clips, read_clip
from tmrender.data.visemes import PARAMS
from tmrender.errors import UserInputError
from tmrender.eval.metrics import pearson
from tmrender.eval.mouth import mouth_regions
from tmrender.files import atomic_write
from tmrender.models.mouth_reader import MouthReader, MouthReaderConfig, normalise


@dataclass(frozen=True)
class TrainOptions:
    """Options of one mouth reader training run."""

    # schedule
    steps: int = 6000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    max_minutes: float = 0.0  # stop (after a checkpoint) once this much wall time is used; 0 = off
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 50
    val_clips: int = 10
    # augmentation
    margin: int = 6  # pixels around the region available for random shifts
    max_scale: float = 0.08
    max_rotate_deg: float = 6.0
    # data and machine
    frame_stride: int = 1  # use every n-th frame of each clip
    seed: int = 0
    threads: int = 1


# -- data ------------------------------------------------------------------------------------


def output_columns(cfg: MouthReaderConfig) -> list[int]:
    """Indices of cfg.outputs among the corpus mouth columns."""
    unknown = [name for name in cfg.outputs if name not in PARAMS]
    if unknown:
        raise UserInputError(f"unknown mouth column(s) {unknown}; known: {list(PARAMS)}")
    return [PARAMS.index(name) for name in cfg.outputs]


def load_split_regions(
    clips: list[Path], cfg: MouthReaderConfig, margin: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regions, targets and clip numbers of every `stride`-th frame of `clips`.

    Returns regions uint8 (N, 3, h + 2 margin, w + 2 margin), targets float32
    (N, n_outputs) and owner int32 (N,), each frame's index into `clips`.
    """
    columns = output_columns(cfg)
    regions, targets, owner = [], [], []
    for k, path in enumerate(clips):
        clip = read_clip(path)
        frames = clip.frames[::stride]
        regions.append(mouth_regions(frames, cfg, margin).numpy())
        targets.append(clip.mouth[::stride, columns].astype(np.float32))
        owner.append(np.full(len(frames), k, np.int32))
    if not regions:
        raise UserInputError("no clips to train on")
    return np.concatenate(regions), np.concatenate(targets), np.concatenate(owner)


def cached_regions(
    cache: Path, clips: list[Path], cfg: MouthReaderConfig, margin: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`load_split_regions`, cached in `cache` (.npz) keyed by clip ids, config and margin."""
    key = json.dumps(
        {"clips": [p.name for p in clips], "cfg": cfg.to_json(), "m": margin, "s": stride}
    )
    if cache.exists():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["regions"], z["targets"], z["owner"]
    regions, targets, owner = load_split_regions(clips, cfg, margin, stride)
    with atomic_write(cache) as partial, partial.open("wb") as f:
        np.savez(f, key=np.array(key), regions=regions, targets=targets, owner=owner)
    return regions, targets, owner


# -- augmentation ----------------------------------------------------------------------------


def augment(
    regions: Tensor, cfg: MouthReaderConfig, opts: TrainOptions, gen: torch.Generator
) -> Tensor:
    """uint8 (B, 3, h + 2m, w + 2m) regions -> normalised float (B, 3, h, w), randomly
    shifted (up to the margin), scaled, rotated, recoloured, blurred and noised."""
    b = regions.shape[0]
    h, w = cfg.crop_size
    x = regions.float() / 255.0
    # 1. geometry: an affine grid that samples an (h, w) window of the padded region
    full_h, full_w = x.shape[-2:]
    scale = 1 + (torch.rand(b, generator=gen) * 2 - 1) * opts.max_scale
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(opts.max_rotate_deg)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * opts.margin
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * w / full_w, -sin * h / full_w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / full_h, cos * h / full_h
    theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / full_w, shift[:, 1] * 2 / full_h
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # 2. colour: per-channel gain and a common offset
    gain = 1 + (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * 0.15
    offset = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.08
    x = x * gain + offset
    # 3. softness: a 3x3 blur of random strength on half of the batch
    strength = torch.rand(b, 1, 1, 1, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) < 0.5)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x + strength * (blurred - x)
    # 4. noise of random level
    level = torch.rand(b, 1, 1, 1, generator=gen) * 0.03
    x = x + level * torch.randn(x.shape, generator=gen)
    return normalise(x.clamp(0, 1) * 255.0)


# -- training loop ---------------------------------------------------------------------------


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up then cosine decay to 2% of `opts.lr`."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = min(1.0, (step - opts.warmup) / max(1, opts.steps - opts.warmup))
    return opts.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_fn(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over (B, n_outputs), the first output (`open`) weighted twice."""
    weights = torch.ones(pred.shape[1])
    weights[0] = 2.0
    return (((pred - target) ** 2) * weights).mean()


@torch.no_grad()
def validate(model: MouthReader, regions: np.ndarray, targets: np.ndarray, margin: int) -> dict:
    """Pearson r and MAE per output on centre crops of the held-out regions."""
    model.eval()
    h, w = model.cfg.crop_size
    preds = []
    for i in range(0, len(regions), 512):
        chunk = torch.from_numpy(regions[i : i + 512])[
            ..., margin : margin + h, margin : margin + w
        ]
        preds.append(model(normalise(chunk)).clamp(0, 1))
    pred = torch.cat(preds).numpy()
    model.train()
    return {
        name: {
            "r": round(pearson(pred[:, j], targets[:, j]), 5),
            "mae": round(float(np.abs(pred[:, j] - targets[:, j]).mean()), 5),
        }
        for j, name in enumerate(model.cfg.outputs)
    }


def save_training_checkpoint(path: Path, model, optimizer, step: int, opts: TrainOptions) -> None:
    """Atomically write model, optimizer, step, config and options."""
    state = {
        "model": model.state_dict(),
        "opt": optimizer.state_dict(),
        "step": step,
        "config": model.cfg.to_json(),
        "options": asdict(opts),
    }
    with atomic_write(path) as partial:
        torch.save(state, partial)


def load_training_checkpoint(path: Path) -> tuple[MouthReader, dict]:
    """-> (model with the checkpoint's weights, the raw checkpoint dict)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = MouthReader(MouthReaderConfig.from_json(state["config"]))
    model.load_state_dict(state["model"])
    return model, state


def train(
    data: Path,
    out: Path,
    opts: TrainOptions,
    cfg: MouthReaderConfig | None = None,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
) -> MouthReader:
    """Train (or resume) a mouth reader on data/train; returns the final model."""
    previous = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        return _train(data, out, opts, cfg, resume, on_log)
    finally:
        torch.set_num_threads(previous)


def _train(data, out, opts, cfg, resume, on_log) -> MouthReader:
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.jsonl"
    # 1. model and optimizer, from the checkpoint when resuming
    step = 0
    if resume and ckpt_path.exists():
        model, state = load_training_checkpoint(ckpt_path)
        step = state["step"]
    else:
        if resume:
            raise UserInputError(f"nothing to resume: {ckpt_path} does not exist")
        model = MouthReader(cfg)
        log_path.unlink(missing_ok=True)
    cfg = model.cfg
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    if step:
        optimizer.load_state_dict(state["opt"])
    # 2. data: all train clips but the last val_clips
    clips = list_clips(data, "train")
    if len(clips) <= opts.val_clips:
        raise UserInputError(f"need more than {opts.val_clips} train clips in {data}")
    fit_clips, val_clips = clips[: -opts.val_clips], clips[-opts.val_clips :]
    regions, targets, _ = cached_regions(
        out / "regions-fit.npz", fit_clips, cfg, opts.margin, opts.frame_stride
    )
    val_regions, val_targets, _ = cached_regions(
        out / "regions-val.npz", val_clips, cfg, opts.margin, 1
    )
    # 3. loop: sample a batch, augment, step; log, validate and checkpoint on schedule
    gen = torch.Generator().manual_seed(opts.seed * 100_003 + step)
    regions_t, targets_t = torch.from_numpy(regions), torch.from_numpy(targets)
    start, losses = time.perf_counter(), []
    model.train()
    while step < opts.steps:
        idx = torch.randint(len(regions_t), (opts.batch,), generator=gen)
        x = augment(regions_t[idx], cfg, opts, gen)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, opts)
        loss = loss_fn(model(x), targets_t[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if step % opts.log_every == 0:
            row = {"step": step, "loss": float(np.mean(losses)), "lr": lr_at(step - 1, opts)}
            row["seconds"] = round(time.perf_counter() - start, 1)
            _append_log(log_path, row, on_log)
            losses = []
        out_of_time = opts.max_minutes and time.perf_counter() - start > opts.max_minutes * 60
        if step % opts.checkpoint_every == 0 or step == opts.steps or out_of_time:
            row = {"step": step, "val": validate(model, val_regions, val_targets, opts.margin)}
            _append_log(log_path, row, on_log)
            save_training_checkpoint(ckpt_path, model, optimizer, step, opts)
            plot_losses(log_path, out / "loss.png")
        if out_of_time:
            break
    return model.eval()


def _append_log(path: Path, row: dict, on_log: Callable[[dict], None] | None) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    if on_log:
        on_log(row)


def plot_losses(log_path: Path, png: Path) -> None:
    """Loss curve (log scale) and validation r of `open` per checkpoint, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val" in r]
    fig, (ax_loss, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.semilogy([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
    ax_loss.set(xlabel="step", ylabel="train loss (weighted MSE)", title="mouth reader")
    ax_loss.grid(alpha=0.3)
    if val_rows:
        for name in val_rows[-1]["val"]:
            ax_r.plot(
                [r["step"] for r in val_rows],
                [r["val"][name]["r"] for r in val_rows],
                marker="o",
                label=name,
            )
        ax_r.axhline(0.97, color="grey", linestyle="--", linewidth=1)
        ax_r.legend()
    ax_r.set(xlabel="step", ylabel="validation Pearson r", ylim=(0.5, 1.0))
    ax_r.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# -- export and test figures -----------------------------------------------------------------


def _blur(frames: np.ndarray) -> np.ndarray:
    """Half resolution and back up (a soft decoder), uint8 (T, H, W, 3)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    small = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
    x = F.interpolate(small, size=frames.shape[1:3], mode="bilinear")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _shift(frames: np.ndarray, dx: int = 3, dy: int = 2) -> np.ndarray:
    """The picture moved by (dx, dy) pixels, edges repeated, uint8 (T, H, W, 3)."""
    padded = np.pad(frames, ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    return padded[:, abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


def _noise(frames: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Gaussian pixel noise of `sigma` (0..255 units), fixed seed, uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(0)
    noisy = frames.astype(np.float32) + rng.normal(0, sigma, frames.shape).astype(np.float32)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)


# Degradations the reader must shrug off: generated frames are softer, placed a little
# differently and noisier than the corpus drawings.
DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur": _blur,
    "shift": _shift,
    "noise": _noise,
}


def evaluate_reader(model: MouthReader, clips: list[Path], robustness: bool = False) -> dict:
    """Pooled and per-clip figures of `model` on the true frames of `clips`:
    {"clips", "frames", output: {"r", "mae", "r_clip_mean", "r_clip_min"}}; with
    `robustness`, also {"robustness": {degradation: pooled r of the first output}}."""
    from tmrender.eval.mouth import read_mouth

    columns = output_columns(model.cfg)
    preds, truths, per_clip = [], [], []
    degraded: dict[str, list[np.ndarray]] = {name: [] for name in DEGRADATIONS}
    for path in clips:
        clip = read_clip(path)
        pred, truth = read_mouth(model, clip.frames), clip.mouth[:, columns]
        preds.append(pred)
        truths.append(truth)
        per_clip.append([pearson(pred[:, j], truth[:, j]) for j in range(len(columns))])
        if robustness:
            for name, degrade in DEGRADATIONS.items():
                degraded[name].append(read_mouth(model, degrade(clip.frames))[:, 0])
    if not preds:
        raise UserInputError("no clips to evaluate the mouth reader on")
    pred, truth, per_clip = np.concatenate(preds), np.concatenate(truths), np.array(per_clip)
    report: dict = {"clips": len(per_clip), "frames": len(pred)}
    for j, name in enumerate(model.cfg.outputs):
        report[name] = {
            "r": round(pearson(pred[:, j], truth[:, j]), 4),
            "mae": round(float(np.abs(pred[:, j] - truth[:, j]).mean()), 4),
            "r_clip_mean": round(float(np.nanmean(per_clip[:, j])), 4),
            "r_clip_min": round(float(np.nanmin(per_clip[:, j])), 4),
        }
    if robustness:
        report["robustness"] = {
            f"{name} ({model.cfg.outputs[0]} r)": round(
                pearson(np.concatenate(values), truth[:, 0]), 4
            )
            for name, values in degraded.items()
        }
    return report
