"""Training recipe of the mouth reader (`tmrender train mouth-reader`).

Supervision: corpus frames of the train split and their ground-truth mouth columns
(`MouthReaderConfig.outputs`). The last `val_clips` clips of the split are held out for
validation; the test split is never read here.

Robustness to generated frames comes from augmentation of the mouth region: random
shift, scale and rotation (head placement), colour gain and offset, blur (a decoder's
softness) and pixel noise.

Training runs on the one training loop (`tmrender.train.loop.run_stage`) through
`MouthReaderStage`. Run folder (git-ignored, e.g. runs/mouth_reader/):
    checkpoint.pt    the loop's checkpoint (network, optimizer, step, RNG states, options),
                     every `checkpoint_every` steps (atomically); `resume` continues from it
    config.json      the reader's MouthReaderConfig
    log.jsonl        one JSON line per logged step (loss, lr) and per validation
                     ({"val": {"open_r", "open_mae", ...}})
    loss.png         the loss curve and the validation figures, redrawn at each checkpoint
    export.safetensors  fp32 weights at the end
    regions-*.npz    the cached input regions of the split (rebuilt when missing)
"""

from __future__ import annotations

import json
import math
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
from tmrender.train.loop import CHECKPOINT, LoopOptions, Schedule, loop_options, run_stage, seeded

CONFIG = "config.json"


@dataclass(frozen=True)
class TrainOptions:
    """Options of one mouth reader training run."""

    # schedule
    steps: int = 4000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    max_minutes: float = 0.0  # stop (after a checkpoint) once this much wall time is used; 0 = off
    # bookkeeping
    checkpoint_every: int = 250
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


# -- the stage on the one training loop (tmrender.train.loop) -------------------------------


def loss_fn(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over (B, n_outputs), the first output (`open`) weighted twice."""
    weights = torch.ones(pred.shape[1], device=pred.device)
    weights[0] = 2.0
    return (((pred.float() - target) ** 2) * weights).mean()


@torch.no_grad()
def validate(model: MouthReader, regions: np.ndarray, targets: np.ndarray, margin: int) -> dict:
    """Pearson r and MAE per output on centre crops of the held-out regions:
    {output: {"r", "mae"}}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    h, w = model.cfg.crop_size
    preds = []
    for i in range(0, len(regions), 512):
        chunk = torch.from_numpy(regions[i : i + 512])[
            ..., margin : margin + h, margin : margin + w
        ]
        preds.append(model(normalise(chunk.to(device))).clamp(0, 1).float().cpu())
    pred = torch.cat(preds).numpy()
    model.train(was_training)
    return {
        name: {
            "r": round(pearson(pred[:, j], targets[:, j]), 5),
            "mae": round(float(np.abs(pred[:, j] - targets[:, j]).mean()), 5),
        }
        for j, name in enumerate(model.cfg.outputs)
    }


def mouth_reader_loop(opts: TrainOptions, device: str = "cpu") -> LoopOptions:
    """The loop's options for a mouth reader run: its own warm-up and bookkeeping, no
    gradient clipping, cosine to 2%, validation at every checkpoint."""
    schedule = Schedule(steps=opts.steps, lr=opts.lr, val_every=opts.checkpoint_every)
    return loop_options(
        schedule, warmup=opts.warmup, min_lr_ratio=0.02, weight_decay=opts.weight_decay,
        grad_clip=0.0, max_minutes=opts.max_minutes, checkpoint_every=opts.checkpoint_every,
        log_every=opts.log_every, seed=opts.seed, threads=opts.threads, device=device,
    )  # fmt: skip


class MouthReaderStage:
    """`tmrender.train.loop.Stage` of the mouth reader: one network, one optimizer."""

    name = "mouth_reader"

    def __init__(self, data: Path, out: Path, cfg: MouthReaderConfig, opts: TrainOptions) -> None:
        """Regions of the train split (the last `opts.val_clips` clips held out), cached
        in `out`; the reader is built from `cfg`, seeded by `opts.seed`."""
        self.opts = opts
        with seeded(opts.seed):
            self.model = MouthReader(cfg)
        clips = list_clips(data, "train")
        if len(clips) <= opts.val_clips:
            raise UserInputError(f"need more than {opts.val_clips} train clips in {data}")
        fit_clips, val_clips = clips[: -opts.val_clips], clips[-opts.val_clips :]
        regions, targets, _ = cached_regions(
            out / "regions-fit.npz", fit_clips, cfg, opts.margin, opts.frame_stride
        )
        self.val_regions, self.val_targets, _ = cached_regions(
            out / "regions-val.npz", val_clips, cfg, opts.margin, 1
        )
        self.regions, self.targets = torch.from_numpy(regions), torch.from_numpy(targets)
        self.val: dict[str, float] = {}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"model": list(self.model.parameters())}

    def updates(self, step: int) -> list[str]:
        return ["model"]

    def batch(self, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(augmented regions (B, 3, h, w), targets (B, n_outputs)) on `device`."""
        idx = torch.randint(len(self.regions), (self.opts.batch,), generator=gen)
        x = augment(self.regions[idx], self.model.cfg, self.opts, gen)
        return x.to(device), self.targets[idx].to(device)

    def loss(self, opt_name: str, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
        x, y = batch
        return loss_fn(self.model(x), y), {}

    def validate(self) -> dict[str, float]:
        nested = validate(self.model, self.val_regions, self.val_targets, self.opts.margin)
        self.val = {
            f"{name}_{k}": v for name, figures in nested.items() for k, v in figures.items()
        }
        return self.val

    def export(self, path: Path) -> dict:
        """fp32 weights of the reader (the CLI's --export decides fp16 for the shipped file)."""
        from tmrender.eval.mouth import save_mouth_reader

        extra = {"held_out": self.val, "options": asdict(self.opts)}
        return {"sha256": save_mouth_reader(self.model, path, half=False, extra=extra)}


def train(
    data: Path,
    out: Path,
    opts: TrainOptions,
    cfg: MouthReaderConfig | None = None,
    resume: bool = False,
    on_log: Callable[[dict], None] | None = None,
    device: str = "cpu",
) -> MouthReader:
    """Train (or, with `resume`, continue) a mouth reader on data/train with the one
    training loop; returns the final model (eval mode). The run folder keeps the reader's
    config in `config.json`, so `resume` needs no `cfg`."""
    out = Path(out)
    config_path = out / CONFIG
    if resume:
        if not config_path.exists():
            raise UserInputError(f"nothing to resume: {config_path} does not exist")
        cfg = MouthReaderConfig.from_json(config_path.read_text())
    cfg = cfg or MouthReaderConfig()
    out.mkdir(parents=True, exist_ok=True)
    config_path.write_text(cfg.to_json())
    stage = MouthReaderStage(data, out, cfg, opts)
    run_stage(stage, out, mouth_reader_loop(opts, device), resume=resume, on_log=on_log)
    return stage.model.eval()


def load_training_checkpoint(path: Path) -> tuple[MouthReader, dict]:
    """-> (model with the checkpoint's weights, the raw checkpoint dict); the config comes
    from `config.json` beside the checkpoint."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = MouthReader(MouthReaderConfig.from_json((path.parent / CONFIG).read_text()))
    model.load_state_dict(state["networks"]["model"])
    return model, state


def run_model(out: Path) -> MouthReader:
    """The reader of the run folder `out`'s checkpoint, in eval mode (`--test-only`)."""
    path = Path(out) / CHECKPOINT
    if not path.exists():
        raise UserInputError(f"no checkpoint in {out}; train first")
    return load_training_checkpoint(path)[0].eval()


def export_weights(model: MouthReader, data: Path, path: Path, val_clips: int = 10) -> str:
    """Write the shipped reader to `path`: fp16 weights if they read the last `val_clips`
    train clips of `data` as well as fp32 do (|dr| < 1e-3 on every output), else fp32;
    records the SHA-256 in the folder's SHA256SUMS and returns it."""
    import tempfile

    from tmrender.eval.mouth import load_mouth_reader, save_mouth_reader
    from tmrender.files import SUMS_FILE, record_checksum

    held_out = list_clips(data, "train")[-val_clips:]
    reference = evaluate_reader(model, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "half.safetensors"
        save_mouth_reader(model, probe, half=True)
        halved = evaluate_reader(load_mouth_reader(probe), held_out)
    half = all(abs(halved[k]["r"] - reference[k]["r"]) < 1e-3 for k in model.cfg.outputs)
    extra = {"dtype": "float16" if half else "float32", "held_out_figures": reference}
    digest = save_mouth_reader(model, path, half=half, extra=extra)
    record_checksum(path.parent / SUMS_FILE, path, digest)
    return digest


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
