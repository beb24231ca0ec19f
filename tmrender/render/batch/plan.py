"""Planning a batch: settings, shards, and what to do with each row (render, skip, fail).

Shards. Row i (0-based, manifest order, blank lines not counted) belongs to shard
i % N == I: `Shard.parse("I/N")` by hand, or RANK / WORLD_SIZE under torchrun.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tmrender.errors import UserInputError
from tmrender.files import sha256_cached, sha256_file
from tmrender.media.video import DEFAULT_CRF
from tmrender.render.batch.sidecars import is_finished, read_sidecar, render_key
from tmrender.render.manifest import CheckedRow, ManifestRow, check_rows, read_manifest

DEFAULT_REPORT_NAME = "batch-report.json"

Action = Literal["render", "skip", "fail"]


# --- Settings and shards ------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's part of the manifest: rows with index % count == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'I/N' with 0 <= I < N."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UserInputError(f"--shard must be I/N, e.g. 0/4; got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise UserInputError(f"--shard I/N needs 0 <= I < N; got {text!r}")
        return cls(index, count)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Shard | None:
        """The torchrun shard (RANK / WORLD_SIZE), or None outside torchrun."""
        env = os.environ if env is None else env
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            return cls.parse(f"{env['RANK']}/{env['WORLD_SIZE']}")
        except UserInputError as err:
            raise UserInputError(f"bad RANK / WORLD_SIZE in the environment: {err}") from None

    def owns(self, index: int) -> bool:
        return index % self.count == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class BatchSettings:
    """How to run a batch (the CLI's options)."""

    # what to render
    model: str | None = None  # name or path; None: the default model
    out_dir: Path | None = None  # None: the manifest's folder
    crf: int = DEFAULT_CRF
    # resume
    overwrite: bool = False  # render finished rows again
    # compute
    workers: int = 1
    device: str = "auto"
    shard: Shard | None = None  # None: from RANK / WORLD_SIZE, else the whole manifest
    # report
    report: Path | None = None  # None: <out_dir>/batch-report.json
    merge_timeout: float = 600.0


# --- Rows and jobs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One row to render, as sent to a worker (picklable)."""

    index: int
    line: int
    image: Path
    audio: Path
    output: Path
    options: object  # RenderOptions (typed loosely so that this module imports no torch)
    key: dict
    face: str | int = "auto"  # as `tmrender generate --face`


@dataclass
class PlannedRow:
    """A checked row and what the batch will do with it."""

    checked: CheckedRow
    action: Action
    job: Job | None = None
    reason: str = ""  # why: the error, "finished earlier", "new", "inputs changed", ...
    avatar_like: bool = True  # the picture as rendered looks like the drawn avatars

    @property
    def row(self) -> ManifestRow:
        return self.checked.row


@dataclass
class BatchPlan:
    """Everything decided before rendering starts."""

    manifest: Path
    rows: list[ManifestRow]  # the whole manifest
    planned: list[PlannedRow]  # this shard's rows
    shard: Shard
    model_path: Path
    model_sha256: str
    model_trained: bool
    device: str
    out_dir: Path
    report_path: Path
    settings: BatchSettings
    fingerprint: str  # the same for every rank of one batch
    threads: int = 1  # torch intra-op threads per worker

    def with_action(self, action: Action) -> list[PlannedRow]:
        return [p for p in self.planned if p.action == action]

    @property
    def audio_seconds_to_render(self) -> float:
        return sum(p.checked.audio_seconds or 0.0 for p in self.with_action("render"))


# --- Planning -----------------------------------------------------------------------------


def prepare_batch(
    manifest: Path | str, settings: BatchSettings, create_folders: bool = True
) -> BatchPlan:
    """Read, shard and validate the manifest, hash inputs, and decide each row's action.

    Raises UserInputError when the manifest, the model or the device cannot be used.
    `create_folders` makes missing output folders (off for a dry run)."""
    from tmrender.models.checkpoint import read_metadata
    from tmrender.models.registry import resolve_model_path

    # 1. The manifest and this shard's rows.
    manifest = Path(os.path.abspath(manifest))
    out_dir = Path(os.path.abspath(settings.out_dir or manifest.parent))
    rows = read_manifest(manifest, out_dir)
    shard = settings.shard or Shard.from_env() or Shard()
    mine = [row for row in rows if shard.owns(row.index)]
    # 2. The model and the device, before any file of a row is opened.
    model_path = resolve_model_path(settings.model)
    meta = read_metadata(model_path)
    device = batch_device(settings.device)
    # 3. Every row of this shard (collisions over the whole manifest).
    checked = check_rows(rows, probe=mine, create_folders=create_folders)
    # 4. Hashes, then what to do with each row.
    model_sha = sha256_cached(model_path)  # hashed once per process
    hashes, pictures = HashCache(), PictureChecks()
    planned = [plan_row(c, model_sha, settings, hashes, pictures) for c in checked]
    report = Path(os.path.abspath(settings.report or out_dir / DEFAULT_REPORT_NAME))
    return BatchPlan(
        manifest=manifest,
        rows=rows,
        planned=planned,
        shard=shard,
        model_path=model_path,
        model_sha256=model_sha,
        model_trained=bool(meta["trained"]),
        device=device,
        out_dir=out_dir,
        report_path=report,
        settings=settings,
        fingerprint=f"{sha256_file(manifest)[:16]}/{shard.count}",
        threads=threads_per_worker(settings.workers),
    )


def plan_row(
    checked: CheckedRow,
    model_sha: str,
    settings: BatchSettings,
    hashes: HashCache,
    pictures: PictureChecks | None = None,
) -> PlannedRow:
    """Fail a bad row; skip a finished one (unless overwriting); fail a row whose picture
    cannot be framed (`PictureChecks`: no face, a face number past those found, a face too
    small); render the rest."""
    from tmrender.render.pipeline import RenderOptions

    if not checked.ok:
        return PlannedRow(checked, "fail", reason=checked.error or "")
    row = checked.row
    try:
        image_sha, audio_sha = hashes.get(row.image), hashes.get(row.audio)
    except OSError as err:
        return PlannedRow(checked, "fail", reason=f"cannot read an input: {err}")
    options = RenderOptions(
        seed=checked.seed, mode=checked.mode, crop=checked.crop, crf=settings.crf
    )
    key = render_key(image_sha, audio_sha, model_sha, options, checked.face)
    job = Job(row.index, row.line, row.image, row.audio, row.output, options, key, checked.face)
    previous = read_sidecar(row.output)
    if is_finished(row.output, key, previous) and not settings.overwrite:
        return PlannedRow(checked, "skip", job, "finished earlier")
    error, avatar_like = (pictures or PictureChecks()).get(row.image, checked.face, checked.crop)
    if error is not None:
        return PlannedRow(checked, "fail", reason=error)
    reason = _render_reason(row.output, key, previous, settings)
    return PlannedRow(checked, "render", job, reason, avatar_like)


def _render_reason(output: Path, key: dict, previous: dict | None, settings) -> str:
    if is_finished(output, key, previous):
        return "overwrite"
    if not output.exists():
        return "new"
    if previous is None:
        return "output exists without a sidecar"
    changed = sorted(k for k in key if previous.get("key", {}).get(k) != key[k])
    return f"changed: {', '.join(changed)}" if changed else "output differs from its sidecar"


def batch_device(name: str) -> str:
    """The device of this rank: under torchrun, cuda:LOCAL_RANK when CUDA is asked or auto."""
    import torch

    from tmrender.devices import resolve_device

    device = resolve_device(name)
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return str(device)


def threads_per_worker(workers: int) -> int:
    """Torch intra-op threads per worker: the cores shared out over the workers (and the
    processes of this machine under torchrun), at least 1."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (2 * max(1, workers) * max(1, local_world)))


class HashCache:
    """sha256 of files, each file read once per batch (many rows share one portrait)."""

    def __init__(self) -> None:
        self._known: dict[Path, str] = {}

    def get(self, path: Path) -> str:
        if path not in self._known:
            self._known[path] = sha256_file(path)
        return self._known[path]


class PictureChecks:
    """Each picture framed as `tmrender generate` frames it (`render.source.load_picture`:
    decoded, its face found and aligned), once per (image, face, crop) of a batch: one
    line on what stops it rendering, and whether it looks like the drawn avatars as it
    will be rendered. Nothing of the picture is kept."""

    def __init__(self) -> None:
        self._known: dict[tuple, tuple[str | None, bool]] = {}

    def get(self, image: Path, face: str | int, crop) -> tuple[str | None, bool]:
        """(the reason it cannot render, or None; avatar-like)."""
        from tmrender.render.source import load_picture

        key = (image, face, crop)
        if key not in self._known:
            try:
                self._known[key] = (None, load_picture(image, face, crop).avatar_like())
            except UserInputError as err:
                self._known[key] = (str(err), True)
        return self._known[key]


def unlike_avatars(plan: BatchPlan) -> list[ManifestRow]:
    """The rows to render whose picture, as it will be rendered (the aligned face on the
    face path), does not look like the drawn avatars the model learned from."""
    return [p.row for p in plan.with_action("render") if not p.avatar_like]
