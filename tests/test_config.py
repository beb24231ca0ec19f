"""Config: validation errors the CLI shows as one line, and checkpoints written before a
field was removed still load (`REMOVED_FIELDS`), unless they need the removed feature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmrender.config import ConfigError, ModelConfig, SamplerConfig, VAEConfig
from tmrender.errors import UserInputError
from tmrender.models.checkpoint import read_metadata

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _old_config(**changes: dict) -> str:
    """Today's default config as JSON, with the fields of an older version merged in."""
    data = json.loads(ModelConfig().to_json())
    for section, fields in changes.items():
        data[section].update(fields)
    return json.dumps(data)


OLD_FIELDS = dict(
    vae={"dec_lookahead": 0, "dec_blocks": [0, 0, 0]},
    audio_proj={"source": "features", "head_hidden": 128, "head_context": 1},
    sampler={"teacher_steps": 24},
)


def test_removed_fields_with_todays_meaning_are_dropped_on_load():
    assert ModelConfig.from_json(_old_config(**OLD_FIELDS)) == ModelConfig()


@pytest.mark.parametrize(
    ("section", "field", "value", "feature"),
    [
        ("vae", "dec_lookahead", 1, "look-ahead decoder"),
        ("vae", "dec_blocks", [0, 1, 0], "residual blocks in the decoder"),
        ("audio_proj", "source", "mouth", "narrow audio path"),
    ],
)
def test_a_removed_feature_in_use_is_refused_by_name(section, field, value, feature):
    with pytest.raises(ConfigError, match=feature):
        ModelConfig.from_json(_old_config(**{section: {field: value}}))


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="unknown fields \\['wings'\\]"):
        ModelConfig.from_json(_old_config(sampler={"wings": 2}))


@pytest.mark.parametrize(
    "build",
    [
        lambda: SamplerConfig(context="sometimes"),
        lambda: SamplerConfig(student_timesteps=(1.0, 0.6, 0.3)),
        lambda: VAEConfig(kind="other"),
        lambda: VAEConfig(dec_expand_level=3),
        lambda: ModelConfig(height=100),
    ],
)
def test_validation_raises_a_user_error_not_an_assert(build):
    with pytest.raises(ConfigError) as err:
        build()
    assert isinstance(err.value, UserInputError) and isinstance(err.value, ValueError)


def test_every_shipped_checkpoint_config_loads():
    files = sorted(WEIGHTS.glob("stages/*.safetensors")) + [WEIGHTS / "tm-mini.safetensors"]
    assert len(files) >= 5
    for path in files:
        cfg = read_metadata(path)["config"]
        assert cfg.vae.dec_channels == (48, 32) and cfg.audio_proj.tokens == 8, path
