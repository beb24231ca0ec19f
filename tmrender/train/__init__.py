"""Training recipes, one module per stage (`tmrender train STAGE`); losses are pure
functions, loops are thin, every stage resumes from its run folder.

- `loop`: the one training loop (`run_stage`) that runs every stage's `Stage`.
- `mouth_reader`: the lip-sync instrument of `tmrender eval`.
- `vae`: the causal VAE on corpus frames, with its latent statistics.
- `audio` (+ `augment`): the Wav2Vec2 audio encoder on frame phonemes and mouth targets.
- `dmd`: the 2-step sparse-causal student by asymmetric distribution matching distillation.
- `export`: the shipped checkpoint (fp16 per network, provenance, SHA256SUMS line).
"""
