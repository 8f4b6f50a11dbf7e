"""Ablation sweeps (`nanoflux sweep`): the recipe (config), the pool and the cells' rows (pool), the sweep folder
(folder), one cell's data, training and evaluation (cells), the choice on dev (select), the report (report, labels,
plots), publishing it (publish), and the entry that runs them in order (run)."""
