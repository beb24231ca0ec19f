"""`tmrender train merge`: one stage file from two, for stages that train independently.

The audio stage trains only the audio encoder, so it can run beside the VAE stage rather
than after it. Its export then carries a VAE that is not the trained one; `merge_networks`
writes a checkpoint with the config and networks of `base` (the VAE stage's export) and the
named networks taken from `donor` (the audio stage's export), checked strictly for names and
shapes. The extra metadata keeps both files' provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.models.checkpoint import compare_keys, load_checkpoint, save_checkpoint
from tmrender.train.export import NETWORKS


def merge_networks(base: Path, donor: Path, networks: Sequence[str], output: Path) -> dict:
    """Write `output`: `base` with `networks` (state-dict prefixes) replaced by `donor`'s.
    Returns the merged file's extra metadata."""
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown or not networks:
        raise UserInputError(f"--take must name networks among {', '.join(NETWORKS)}")
    model, base_meta = load_checkpoint(base)
    donor_model, donor_meta = load_checkpoint(donor)
    if "vae" in networks:
        check_same_vae(model, donor_model, f"{donor}: its vae does not fit {base}")
    for name in networks:
        target, source = getattr(model, name), getattr(donor_model, name)
        expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in source.state_dict().items()}
        report = compare_keys(expected, found)
        if not report.ok:
            raise UserInputError(f"{donor}: its {name} does not fit {base}: {report.describe()}")
        target.load_state_dict(source.state_dict())
    extra = {
        **base_meta["extra"],
        "merged": {"base": base.name, "donor": donor.name, "networks": list(networks)},
        "donor_extra": donor_meta["extra"],
    }
    with atomic_write(output) as partial:
        save_checkpoint(model, partial, trained=False, extra_meta=extra)
    return extra


def check_same_vae(model, donor, what: str) -> None:
    """`donor`'s VAE (a TalkingModel's) must be configured as `model`'s: the merged file
    keeps `model`'s config, and its DiT reads the VAE's latents. UserInputError naming the
    fields that differ otherwise."""
    mine, theirs = model.cfg.vae, donor.cfg.vae
    differ = [
        f.name for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name)
    ]
    if differ:
        raise UserInputError(f"{what}: another VAE config ({', '.join(differ)})")
