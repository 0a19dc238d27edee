"""lsaf bench: grids of runs against the baselines, with shared work, tables and plots."""
