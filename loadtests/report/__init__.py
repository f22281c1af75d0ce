"""The report of a run directory, its sections rendered from what the run stored (never measured again)."""
