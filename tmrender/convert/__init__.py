"""Conversion of real checkpoints (Wan2.1 in its original or diffusers layout, wav2vec2)
into one tmrender checkpoint: `tmrender convert` (see `tmrender.convert.wan`)."""
