"""The README's Results and Performance sections, written from ``results/``.

Every figure comes from the committed files: ``results/<model>/<run>/``
(``config.json``, ``metrics.jsonl``, ``reproduce.json``),
``results/summary.json`` and the benchmark files ``results/*-<backend>.json``.
Nothing here is typed by hand; :mod:`.readme` (``s7jax-report``,
``scripts/report.py``) rewrites the README between its markers, or checks
that it is current. The sections: :mod:`.results` (the models, the seeds,
reproducibility), :mod:`.original` (against the study and the PyTorch
referee), :mod:`.study` (each model's step of the study), :mod:`.performance`.
"""
