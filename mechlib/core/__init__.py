"""The library core, one job per module: problems (data), models (organism, loading),
evaluation and the error taxonomy, interventions, fine-tuning, dictionaries, plots."""
