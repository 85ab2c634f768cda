"""Dataset plugins: the embedded synthetic data, BBBC021, and readers of files on disk (a folder
with a metadata CSV, DeepProfiler, JUMP-CP), which share the helpers in ``files``."""
