"""The project's tools beside the library: the benchmarks and the README's report.

* :mod:`tools.bench`: what s7jax's training costs, against the PyTorch
  original and part by part (``s7jax-bench``, ``s7jax-bench-parts``,
  ``s7jax-bench-step``, ``s7jax-bench-seeds``; ``scripts/bench*.py``);
* :mod:`tools.report`: the README's Results and Performance sections,
  written from ``results/`` (``s7jax-report``; ``scripts/report.py``).

They measure and describe the library; the library never imports them
(``tests/test_tools.py`` checks it), so training pulls in none of this code.
"""
