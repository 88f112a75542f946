"""Evaluation: the field's metrics, bootstrap intervals, the ridge baseline, summary and figures.

- ``metrics``: per-item PixCorr, SSIM, two-way identification, mel correlation,
  log-spectral distance, CER, WER, BLEU.
- ``features``: fixed feature extractors (HOG; AlexNet or TorchScript from local
  weights) and hashed character n-grams.
- ``bootstrap``: percentile bootstrap over items, marginal and paired.
- ``ridge``: ``RidgeDecoder``, ``load_ridge``, ``cross_val_predict_ridge`` and the
  ``fit_baseline`` stage.
- ``evaluate``: the ``evaluate`` stage (methods, chance, comparisons).
- ``summary`` / ``figures``: the ``summarize`` stage, ``summary.md`` and the
  report's figures.

Submodules are imported on use, so ``import cortexflow.evaluation`` is cheap.
"""
