"""A run end to end: the runner executes a plan's cells, the run directory keeps its samples and statistics."""
