"""Training: one loop per model, run under Ray Train (see launcher.py)."""
