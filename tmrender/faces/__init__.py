"""Faces in real photos and video (layer 2, beside media): detection, 68 landmarks, the
similarity alignment to the model's framing and back, tracking, and the mouth measures.

Modules: `models` (the shipped dlib detector and landmark model), `detect` (boxes, largest
first, size limits), `landmarks` (the 68 points, key points, mouth opening and width),
`align` (the canonical framing, similarity transforms, warps to the crop and back),
`crop` (from a picture to the aligned portrait in one call), `track` (detect once, then
follow), `measure` (the mouth of a model-framed frame, without the detector), `bench` (the
tracking rate on one core).
"""

from tmrender.faces.align import CANONICAL, Alignment, align, warp_from_crop, warp_to_crop
from tmrender.faces.crop import FaceCrop, face_crop
from tmrender.faces.detect import MAX_PIXELS, MIN_FACE_PX, Face, detect_faces, main_face, read_image
from tmrender.faces.landmarks import key_points, landmarks, mouth_opening, mouth_width
from tmrender.faces.track import FaceTracker, TrackedFrame

__all__ = [
    "CANONICAL",
    "MAX_PIXELS",
    "MIN_FACE_PX",
    "Alignment",
    "Face",
    "FaceCrop",
    "FaceTracker",
    "TrackedFrame",
    "align",
    "detect_faces",
    "face_crop",
    "key_points",
    "landmarks",
    "main_face",
    "mouth_opening",
    "mouth_width",
    "read_image",
    "warp_from_crop",
    "warp_to_crop",
]
