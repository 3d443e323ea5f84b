"""Training: the loop, its data (folders, scan, grain pipeline, colour pools, held-out crops), the workdir
lock, sample grids and the built-in demo."""
