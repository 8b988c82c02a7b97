"""The benchmark scripts (run one as `python benchmarks/X.py` or `python -m benchmarks.X`); common.py holds what they share."""
