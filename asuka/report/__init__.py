"""The comparison report of finished evaluation runs (``scripts/compare.py``): tables, plots and image grids."""
