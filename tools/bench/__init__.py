"""The benchmarks: what s7jax's training costs, and where the time goes.

One module per benchmark, each with one function per measurement, all on
:mod:`.measure`'s clock, environment record and result writer:

* :mod:`.against_pytorch` (``s7jax-bench``): s7jax's model6 training against
  the PyTorch original, each side in its own process (:mod:`.s7jax_side`,
  :mod:`.s7jax_epochs`, :mod:`.pytorch_side`);
* :mod:`.parts` (``s7jax-bench-parts``): the train step part by part, against
  the machine's limit;
* :mod:`.step` (``s7jax-bench-step``): what each speed choice of the step is worth;
* :mod:`.seeds` (``s7jax-bench-seeds``): N seeds as one program against N runs;
* :mod:`.refusals`, :mod:`.startup`: the repository's own, run from a
  checkout (``scripts/bench_refusals.py``, ``scripts/bench_startup.py``);
* :mod:`.tables`: their results as the tables the benchmarks print and the
  README shows.
"""
