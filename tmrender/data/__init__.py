"""Training and evaluation data: the synthetic talking-avatar corpus and real videos.

- `avatar`: procedural 2-D avatars, their motion and drawing;
- `speech`: eSpeak NG speech with phoneme timing;
- `visemes`: phonemes -> mouth parameters per frame, with coarticulation;
- `resample`: rational-ratio audio resampling;
- `corpus`: generating, writing and reading clips (`tmrender synth`);
- `prepare`: real speaking videos -> the same clip layout (`tmrender prepare`);
- `sheets`: the corpus's picture pages in docs/.

May import config, errors, files, devices, models, diffusion and media I/O; nothing above.
"""
