"""Training and evaluation data: the synthetic talking-avatar corpus and real videos.

- `avatar`: procedural 2-D avatars, their motion and drawing;
- `speech`: eSpeak NG speech with phoneme timing;
- `visemes`: phonemes -> mouth parameters per frame, with coarticulation;
- `resample`: rational-ratio audio resampling;
- `corpus`: generating, writing and reading clips (`tmrender synth`);
- `prepare`: real speaking videos -> the same clip layout (`tmrender prepare`);
- `sheets`: the corpus's picture pages in docs/.

Layer 3: may import config, errors, files, devices, diffusion, models, convert and media
(README.md, "Module map").
"""
