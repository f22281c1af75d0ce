"""Every number of a run, computed from its raw samples.

Estimators, per-cell summaries, the decomposition of a rollout's time, the headline and ablations, the
calibration residuals, the claim's verdict, and all of them at once (``summary``).
"""
