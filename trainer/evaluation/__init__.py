"""Evaluation (`nanoflux eval`): the recipe (config), the adapters compared (variants), the answers from either engine
(generation), the training-compute comparison (compute), results.json/md/png (report), the adapter card's
`model-index` (model_card), and the entry that runs them in order (run). Benchmarks, extraction and scoring are the
kernel's (nanoflux.benchmarks, nanoflux.scoring)."""
