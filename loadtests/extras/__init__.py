"""Measurements beyond the matrix, one per module, each a ``measure()`` and a ``render()``: a section of the report."""
