"""The shipped detector and landmark model: dlib's HOG frontal face detector (built into
dlib) and the 68-point shape predictor of the `face-recognition-models` package.

The weights come with the pip packages; nothing is downloaded. The 68-point model was
trained on the iBUG 300-W data set, whose licence excludes commercial use (README, "Faces").
`face_recognition_models` is located without importing it: its `__init__` needs
`pkg_resources`, which recent setuptools no longer ship.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"


def models_folder() -> Path:
    """The folder of `face_recognition_models`' weight files; RuntimeError if not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "face-recognition-models is not installed: pip install face-recognition-models"
        )
    return Path(spec.origin).parent / "models"


@functools.cache
def detector():
    """dlib's HOG + linear SVM frontal face detector (loaded once)."""
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def shape_predictor():
    """dlib's 68-point landmark regressor (an ensemble of trees, ~100 MB, loaded once)."""
    import dlib

    path = models_folder() / LANDMARK_MODEL
    if not path.is_file():
        raise RuntimeError(f"landmark model missing: {path} (reinstall face-recognition-models)")
    return dlib.shape_predictor(str(path))
