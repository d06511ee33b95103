"""The generated parts of README.md and docs/, written from ``results/``.

Every figure comes from the committed files: ``results/<model>/<run>/``
(``config.json``, ``metrics.jsonl``, ``reproduce.json``) and the benchmark
files ``results/*-<backend>.json`` (``results/summary.json``, which sweeps
write, is for other readers). No figure here is typed by hand (the study's
steps in words, :data:`.study.STEPS`, name parameter counts a test checks);
:mod:`.pages` (``scripts/report.py``) rewrites
each block between its markers, or checks that every one is current. The
parts: :mod:`.results` (the models, the seeds, reproducibility),
:mod:`.original` (against the study and the PyTorch referee), :mod:`.study`
(each model's step of the study), :mod:`.trials` (the recipe trials),
:mod:`.performance`, :mod:`.figures`; :mod:`.before_fix` marks the runs
trained before the max-pool gradient fix.
"""
