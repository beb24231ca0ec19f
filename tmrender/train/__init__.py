"""Training recipes, one module per stage (`tmrender train STAGE`); losses are pure
functions, the loop is one, every stage resumes from its run folder.

- `loop`: the one training loop (`run_stage`) that runs every stage's `Stage`, and the
  loop's options of each stage (`SCHEDULES`, `loop_options`).
- `distributed`: data-parallel training of the DiT stages under torchrun (FSDP2).
- `mouth_reader`: the lip-sync instrument of `tmrender eval` (not a stage).
- `vae`: stage 1, the causal VAE on corpus frames, with its latent statistics.
- `audio` (+ `augment`): stage 2, the Wav2Vec2 audio encoder on frame phonemes and mouths.
- `framing`: one audio source for the stages, read the way the renderer reads it.
- `audio_bank`: the audio stage's data bank (targets, clips, the codec pool).
- `latents`: the latent cache and window batches of the DiT stages.
- `windows`: the toolkit every DiT stage shares (tokens, noise, teacher sampling, decoding,
  lip sync read by the mouth reader).
- `teacher`: stage 3, the bidirectional audio-conditioned teacher DiT (flow matching).
- `ode`: stage 4, the sparse-causal student regressed on the teacher's ODE trajectories.
- `dmd`: stage 5, the 2-step student by asymmetric distribution matching distillation.
- `export`: stage 6, the shipped checkpoint (fp16 per network, provenance, SHA256SUMS).
- `merge`: one stage file from two stages that trained side by side.
- `gap`: the distillation gap, the student against its teacher on the same windows
  (`tmrender eval --teacher`).

Layer 6: may import everything but the CLI (README.md, "Module map").
"""
