"""Training recipes, one module per stage (`tmrender train STAGE`); losses are pure
functions, loops are thin, every stage resumes from its run folder.

- `mouth_reader`: the lip-sync instrument of `tmrender eval`.
"""
