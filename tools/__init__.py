"""The project's tools beside the library: the benchmarks and the docs' report.

* :mod:`tools.bench`: what s7jax's training costs, against the PyTorch
  original and part by part (``scripts/bench*.py``);
* :mod:`tools.report`: the generated blocks of README.md and docs/,
  written from ``results/`` (``scripts/report.py``).

They measure and describe the library; the library never imports them
(``tests/test_tools.py`` checks it), so training pulls in none of this code.
"""
