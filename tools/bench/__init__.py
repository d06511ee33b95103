"""The benchmarks: what s7jax's training costs, and where the time goes.

One module per benchmark, each with one function per measurement, all on
:mod:`.measure`'s clock, environment record and result writer:

* :mod:`.against_pytorch` (``scripts/bench.py``): s7jax's model6 training against
  the PyTorch original, each side in its own process (:mod:`.s7jax_side`,
  :mod:`.s7jax_epochs`, :mod:`.pytorch_side`);
* :mod:`.parts` (``scripts/bench_parts.py``): the train step part by part, against
  the machine's limit;
* :mod:`.step` (``scripts/bench_step.py``): what each speed choice of the step is worth;
* :mod:`.seeds` (``scripts/bench_seeds.py``): N seeds as one program against N runs;
* :mod:`.refusals`, :mod:`.startup`: the repository's own, run from a
  checkout (``scripts/bench_refusals.py``, ``scripts/bench_startup.py``);
* :mod:`.tables`: their results as the tables the benchmarks print and the
  docs show (``docs/performance.md``).
"""
