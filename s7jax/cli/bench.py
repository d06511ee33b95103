"""Time s7jax's model6 training against the original PyTorch recipe, in one run.

    python scripts/bench.py

measures, on this machine and in this one command, each side in its own
subprocess (so that their peak memory is their own):

* s7jax (model6, its default recipe, batch 128): the train step's compile
  time; the jitted step alone on a fixed batch (images/s, clocks read after
  ``block_until_ready``); one full training epoch end to end, input pipeline
  and steps, with the on-device pipeline (``data.DeviceTrainData``, the
  default on a CPU), as one compiled call (``--pipeline scan``), with the
  tf.data pipeline (``data.train_dataset``), and with it and 4 steps per
  compiled call (``--steps-per-call 4``); the evaluation of the 10k test
  images; peak resident memory (``getrusage`` maxrss) after each stage, and
  as the default run leaves it, before the one-call epoch and TensorFlow
  (the tf.data epochs run last) are loaded.
* PyTorch (the original recipe): model6 from ``s7jax.torch_reference``,
  RandomRotation(7) + ColorJitter(brightness=0.2, contrast=0.2) + ToTensor +
  Normalize((0.1307,), (0.3081,)) through a DataLoader with 2 workers, batch
  128, SGD lr 0.01 momentum 0.9: the same quantities (its step on a fixed
  batch, one epoch end to end, the 10k evaluation); and its step as a
  speed-minded user would run it: channels-last, ``torch.compile``, both
  (``--no-tuned-torch`` skips them).

It prints a table with the s7jax/PyTorch speed-up (>1: s7jax faster) and
writes ``results/bench-<cpu|gpu>.json`` (the device is JAX's default backend)
with the machine, versions, date and command. ``--quick`` runs tiny counts on
a subset, for smoke tests (written to a temporary folder unless ``--out``).
Without PyTorch installed (``pip install -e '.[bench]'``), or with
``--skip-torch``, only the s7jax side runs.

MNIST comes from the source the default run reads (``s7jax.data.load_mnist``,
the IDX files on a CPU); the PyTorch side reads the same uint8 arrays.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from s7jax.cli import OneLineErrorParser, add_data_flags, exit_on_known_errors

BATCH_SIZE = 128
EVAL_BATCH_SIZE = 1000  # s7jax's default (Config.eval_batch_size)
TORCH_EVAL_BATCH_SIZE = 128  # the original notebooks used the training loader's settings
TORCH_WORKERS = 2
STEPS_PER_CALL = 4  # the grouped epoch's --steps-per-call
FULL = dict(steps=100, warmup=5, epochs_measured=1, train_images=None, test_images=None)
QUICK = dict(steps=3, warmup=1, epochs_measured=1, train_images=1024, test_images=1000)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-measured", type=int,
                   help=f"full training epochs timed per pipeline, their mean reported "
                        f"(default {FULL['epochs_measured']})")
    p.add_argument("--steps", type=int,
                   help=f"steps timed for the fixed-batch step rate (default {FULL['steps']})")
    p.add_argument("--warmup", type=int,
                   help=f"untimed steps before the step rate (default {FULL['warmup']})")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny counts on a subset, for smoke tests: {QUICK}")
    p.add_argument("--skip-torch", action="store_true", help="measure the s7jax side only")
    p.add_argument("--tuned-torch", action=argparse.BooleanOptionalAction, default=None,
                   help="also time PyTorch's step channels-last and with torch.compile (its "
                        "compiles take tens of seconds; default: on, off with --quick)")
    p.add_argument("--out", help="result JSON (default results/bench-<cpu|gpu>.json)")
    add_data_flags(p)
    p.add_argument("--train-images", type=int, help="use only the first N training images")
    p.add_argument("--test-images", type=int, help="use only the first N test images")
    p.add_argument("--worker", choices=["s7jax", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:  # flags given explicitly win over --quick
            setattr(args, name, value)
    if args.tuned_torch is None:
        args.tuned_torch = not args.quick
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    for name in ("epochs_measured", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# --------------------------------------------------------------------------
# Shared by both workers
# --------------------------------------------------------------------------


def maxrss() -> dict[str, int]:
    """Peak resident set sizes in KiB (Linux reports ru_maxrss in KiB): this
    process, and its largest finished child (DataLoader workers)."""
    return {"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


def mean(xs):
    return sum(xs) / len(xs)


def epoch_summary(seconds: list[float], images: int, **extra) -> dict:
    return {"seconds": mean(seconds), "images_per_s": images / mean(seconds),
            "per_epoch_s": seconds, "images": images, **extra}


# --------------------------------------------------------------------------
# s7jax
# --------------------------------------------------------------------------


def run_s7jax(spec: dict) -> dict:
    t0 = time.perf_counter()
    import dataclasses
    import functools

    import jax
    import numpy as np

    from s7jax import data, loops, parallel, train
    from s7jax.steps import (accumulate, eval_step, evaluate_stacked, initial_state,
                             learning_rate_schedule, make_batch_stats_fn, precise_batch_stats,
                             mean_loss_and_accuracy, train_epoch, train_steps, zero_totals)
    from s7jax.config import default_config
    from s7jax.models import get_model

    out: dict = {"import_s": time.perf_counter() - t0}
    # What holds the memory: the peak resident size after each stage.
    out["memory_stages"] = {"imports (JAX, Flax, Optax, s7jax)": maxrss()["maxrss_kib"]}
    t = time.perf_counter()
    # As the default run reads them (s7jax.train.resolve): on a CPU or an
    # accelerator, the IDX files, without TensorFlow in the process.
    data_source = train.resolve(default_config("model6")).data_source
    splits = data.load_mnist(spec["data_dir"], spec["manual_dir"], source=data_source)
    out["data_source"] = data_source
    train_split = splits["train"].subset(spec["train_images"])
    test_split = splits["test"].subset(spec["test_images"])
    out["load_data_s"] = time.perf_counter() - t
    out["train_images"] = len(train_split)
    out["memory_stages"]["MNIST in host memory"] = maxrss()["maxrss_kib"]

    batch_size = spec["batch_size"]
    epochs = spec["epochs_measured"]
    # Every measured epoch is augmented, as on the PyTorch side: the recipe's
    # clean last epochs and its BN re-estimation (timed apart below) are off.
    recipe = default_config("model6")
    config = default_config("model6", batch_size=batch_size, epochs=epochs, allow_long=True,
                            clean_epochs=0, precise_bn=0)
    steps = data.steps_per_epoch(len(train_split), batch_size)
    mesh = parallel.make_mesh()
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    schedule = learning_rate_schedule(config, steps)

    # One initial state, kept on the host: each measurement starts from a
    # fresh device copy of it (the step donates its state), and its static
    # parts (model, optimiser) stay the objects the step was compiled for.
    host_state, dropout_key = initial_state(config, schedule)
    host_state = jax.device_get(host_state)

    def fresh_state():
        return jax.device_put(host_state, replicated)

    state = fresh_state()
    def device_data():
        return loops.device_train_data(config, train_split, replicated)

    # The first batch of the on-device pipeline serves as the fixed batch.
    fixed = next(device_data().batches(0, sharded))

    # Compile, timed on its own: the training loop's own compiled call
    # (steps.train_steps, here one step per call) serves every measurement.
    step_jit = jax.jit(train_steps, donate_argnums=0, out_shardings=(replicated, replicated))
    t = time.perf_counter()
    lowered = step_jit.lower(state, (fixed,), dropout_key)
    out["trace_train_step_s"] = time.perf_counter() - t
    step = lowered.compile()
    out["compile_train_step_s"] = time.perf_counter() - t
    log(f"s7jax: train step traced and compiled in {out['compile_train_step_s']:.2f} s")
    out["memory_stages"]["train step compiled"] = maxrss()["maxrss_kib"]

    # Steady-state step rate on the fixed batch.
    totals = jax.device_put(zero_totals(), replicated)
    for _ in range(spec["warmup"]):
        state, metrics = step(state, (fixed,), dropout_key)
        totals = accumulate(totals, metrics)  # compiles accumulate, untimed
    jax.block_until_ready((state, totals))
    t = time.perf_counter()
    for _ in range(spec["steps"]):
        state, metrics = step(state, (fixed,), dropout_key)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t
    out["step"] = {"steps": spec["steps"], "seconds": seconds}
    out["step_images_per_s"] = spec["steps"] * batch_size / seconds
    log(f"s7jax: step rate {out['step_images_per_s']:,.0f} img/s ({spec['steps']} steps)")

    # Several steps per compiled call (Config.steps_per_call): the same jitted
    # function, compiled untimed for every group size an epoch uses.
    t = time.perf_counter()
    for n in {1} | {n for n, _, _ in loops.epoch_calls(0, steps, STEPS_PER_CALL)}:
        state, _ = step_jit(state, (fixed,) * n, dropout_key)
    jax.block_until_ready(state)
    out["compile_train_steps_s"] = time.perf_counter() - t

    def timed_epochs(batches, label: str, setup_s: float, per_call: int = 1) -> dict:
        """Train ``epochs`` epochs through the training loop's own
        ``loops.step_through`` (metrics accumulated on the device, fetched
        every 50 steps and at the end), ``per_call`` steps per compiled call."""
        nonlocal state
        per_epoch = []
        for epoch in range(epochs):
            t = time.perf_counter()
            totals = jax.device_put(zero_totals(), replicated)
            calls = loops.epoch_calls(0, steps, per_call)
            for state, totals, _, _, fetch in loops.step_through(step_jit, state, batches,
                                                                 dropout_key, totals, calls):
                if fetch:
                    host = jax.device_get(totals)
            jax.block_until_ready(state)
            per_epoch.append(time.perf_counter() - t)
            loss, acc = mean_loss_and_accuracy(host)
            log(f"s7jax: {label} epoch {epoch + 1}: {per_epoch[-1]:.2f} s "
                f"(train loss {loss:.4f}, acc {acc:.2f}%)")
        return epoch_summary(per_epoch, steps * batch_size, steps=steps, setup_s=setup_s)

    def first_ready(it):
        """Time-to-first-batch (pipeline construction, tracing, compiling);
        the batch is kept and used as step 0."""
        first = next(it)
        jax.block_until_ready(first)
        return first

    def chain(first, rest):
        yield first
        yield from rest

    def tfds_batches():
        """The training loop's tf.data batches, put on the device one by one."""
        return loops.training_batches(dataclasses.replace(config, pipeline="tfds"), train_split,
                                      0, sharded, replicated)

    # The training split on the device, batched and augmented there.
    state = fresh_state()
    t = time.perf_counter()
    it = device_data().batches(0, sharded)
    first = first_ready(it)
    out["epoch_device"] = timed_epochs(chain(first, it), "on-device", time.perf_counter() - t)
    out["memory_stages"]["an epoch of the on-device pipeline"] = maxrss()["maxrss_kib"]

    # The recipe's BN re-estimation on clean training images, once per epoch.
    if recipe.precise_bn:
        n = min(recipe.precise_bn, len(train_split))
        images = jax.device_put(data.normalize(train_split.images[:n], np.float64))
        stats_fn = make_batch_stats_fn(get_model(config.model))
        times = []
        for _ in range(2):  # the first call compiles
            t = time.perf_counter()
            jax.block_until_ready(precise_batch_stats(stats_fn, state, images,
                                                            EVAL_BATCH_SIZE))
            times.append(time.perf_counter() - t)
        out["precise_bn"] = {"images": n, "seconds": times[1], "first_call_s": times[0]}
        log(f"s7jax: BN re-estimation on {n:,} images {times[1]:.3f} s")

    # Evaluation as after every epoch: the test set already on the device.
    t = time.perf_counter()
    test_batches = loops.device_eval_batches(test_split, EVAL_BATCH_SIZE, sharded)
    prepare_s = time.perf_counter() - t
    eval_step = jax.jit(eval_step, out_shardings=replicated)
    t = time.perf_counter()
    loops.evaluate(eval_step, state, test_batches)  # compiles
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    loss, acc = loops.evaluate(eval_step, state, test_batches)
    seconds = time.perf_counter() - t
    out["eval"] = {"seconds": seconds, "images": len(test_split),
                   "images_per_s": len(test_split) / seconds, "first_call_s": first_s,
                   "prepare_batches_s": prepare_s, "batch_size": EVAL_BATCH_SIZE,
                   "test_loss": loss, "test_acc": acc}
    log(f"s7jax: evaluation of {len(test_split):,} images {seconds:.3f} s (acc {acc:.2f}%)")

    # Everything the default run does has run: its peak memory. The one-call
    # epoch (its program holds more) and the tf.data epochs (they load
    # TensorFlow, ~750 MB resident) come after.
    out["default_path"] = maxrss()
    out["memory_stages"]["BN re-estimation, evaluation"] = out["default_path"]["maxrss_kib"]

    # The same batches, a whole epoch of steps per compiled call (lax.scan),
    # compiled untimed; training only, as the rows above.
    source = device_data()
    scan_epoch = jax.jit(functools.partial(train_epoch, batch_sharding=sharded),
                         donate_argnums=0, out_shardings=(replicated, replicated))
    state = fresh_state()
    t = time.perf_counter()
    scan_epoch = scan_epoch.lower(state, source, dropout_key, np.int32(0)).compile()
    out["compile_epoch_scan_s"] = time.perf_counter() - t
    per_epoch = []
    for epoch in range(epochs):
        t = time.perf_counter()
        state, totals = scan_epoch(state, source, dropout_key, np.int32(epoch))
        loss, acc = mean_loss_and_accuracy(jax.device_get(totals))
        per_epoch.append(time.perf_counter() - t)
        log(f"s7jax: one call per epoch, epoch {epoch + 1}: {per_epoch[-1]:.2f} s "
            f"(train loss {loss:.4f}, acc {acc:.2f}%)")
    out["epoch_scan"] = epoch_summary(per_epoch, steps * batch_size, steps=steps)
    out["memory_stages"]["then the one-call epoch (--pipeline scan)"] = maxrss()["maxrss_kib"]

    # The same evaluation as one compiled call over the stacked batches (as
    # the one-call-per-epoch loop runs it).
    stacked = jax.device_put(data.eval_batches(test_split, batch_size=EVAL_BATCH_SIZE),
                             parallel.stacked_batch_sharded(mesh))
    eval_call = jax.jit(evaluate_stacked, out_shardings=replicated)
    jax.block_until_ready(eval_call(state, stacked))  # compiles
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(eval_call(state, stacked))
        times.append(time.perf_counter() - t)
    out["eval_one_call"] = {"seconds": min(times), "images": len(test_split),
                            "images_per_s": len(test_split) / min(times)}
    log(f"s7jax: evaluation as one call {min(times) * 1e3:.1f} ms (best of 5)")

    if data.tfds_available():
        state = fresh_state()
        t = time.perf_counter()
        it = tfds_batches()
        first = first_ready(it)
        out["epoch_tfds"] = timed_epochs(chain(first, it), "tf.data", time.perf_counter() - t)

        # The same, STEPS_PER_CALL steps per call.
        state = fresh_state()
        t = time.perf_counter()
        it = tfds_batches()
        first = first_ready(it)
        out["epoch_tfds_grouped"] = timed_epochs(
            chain(first, it), f"tf.data, {STEPS_PER_CALL} steps/call", time.perf_counter() - t,
            STEPS_PER_CALL)
        out["steps_per_call"] = STEPS_PER_CALL
    else:
        out["tfds_skipped"] = "TensorFlow / TensorFlow Datasets not installed"
        log(f"s7jax: tf.data epochs skipped: {out['tfds_skipped']}")


    out.update(maxrss())
    device = jax.devices()[0]
    out["backend"] = jax.default_backend()
    out["device_kind"] = device.device_kind
    out["device_count"] = jax.device_count()
    stats = device.memory_stats() if out["backend"] != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    out["config"] = config.to_json()
    return out


# --------------------------------------------------------------------------
# PyTorch, the original recipe
# --------------------------------------------------------------------------


def run_pytorch(spec: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from s7jax import torch_reference
    from s7jax.data import MEAN, STD

    out: dict = {"import_s": time.perf_counter() - t0}
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")

    def sync():
        if use_cuda:
            torch.cuda.synchronize()

    class ArrayMNIST(Dataset):
        """MNIST from uint8 arrays, as torchvision's MNIST serves it: a PIL
        'L' image through ``transform``, and an int label."""

        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

    t = time.perf_counter()
    arrays = np.load(spec["arrays"])
    normalize = transforms.Normalize((MEAN,), (STD,))
    train_tf = transforms.Compose([
        transforms.RandomRotation((-7.0, 7.0), fill=(0,)),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_ds = ArrayMNIST(arrays["train_images"][..., 0], arrays["train_labels"], train_tf)
    test_ds = ArrayMNIST(arrays["test_images"][..., 0], arrays["test_labels"], test_tf)
    out["load_data_s"] = time.perf_counter() - t
    loader_args = dict(batch_size=spec["batch_size"], num_workers=spec["torch_workers"],
                       pin_memory=use_cuda)
    train_loader = DataLoader(train_ds, shuffle=True, **loader_args)
    test_loader = DataLoader(test_ds, shuffle=False,
                             **{**loader_args, "batch_size": spec["torch_eval_batch_size"]})

    model = torch_reference.build("model6").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step(data, target):
        optimizer.zero_grad()
        y_pred = model(data)
        loss = F.nll_loss(y_pred, target)
        loss.backward()
        optimizer.step()
        return y_pred, loss

    def step_rate(model, data, target) -> dict:
        """First step (compiles, for torch.compile), then the steady rate."""
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def train_step():
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()

        model.train()
        sync()
        t = time.perf_counter()
        train_step()
        sync()
        first = time.perf_counter() - t
        for _ in range(spec["warmup"]):
            train_step()
        sync()
        t = time.perf_counter()
        for _ in range(spec["steps"]):
            train_step()
        sync()
        seconds = time.perf_counter() - t
        return {"first_step_s": first, "steps": spec["steps"], "seconds": seconds,
                "images_per_s": spec["steps"] * spec["batch_size"] / seconds}

    # Step rate on a fixed batch (the first of the loader), as the original
    # runs it (eager, NCHW) and as a speed-minded user would: channels-last
    # memory, torch.compile (inductor), both.
    data_, target_ = next(iter(train_loader))
    data_, target_ = data_.to(device), target_.to(device)
    eager = step_rate(model, data_, target_)
    out["first_step_s"] = eager["first_step_s"]
    out["step"] = {"steps": eager["steps"], "seconds": eager["seconds"]}
    out["step_images_per_s"] = eager["images_per_s"]
    log(f"pytorch: step rate {out['step_images_per_s']:,.0f} img/s ({spec['steps']} steps)")
    cl = torch.channels_last
    tuned = {
        "channels_last": lambda: (torch_reference.build("model6").to(device, memory_format=cl),
                                  data_.contiguous(memory_format=cl)),
        "compile": lambda: (torch.compile(torch_reference.build("model6").to(device)), data_),
        "compile_channels_last": lambda: (
            torch.compile(torch_reference.build("model6").to(device, memory_format=cl)),
            data_.contiguous(memory_format=cl)),
    }
    out["step_tuned"] = {}
    for name, make in (tuned.items() if spec["tuned_torch"] else ()):
        try:
            variant, data = make()
            out["step_tuned"][name] = r = step_rate(variant, data, target_)
            log(f"pytorch: step rate, {name}: {r['images_per_s']:,.0f} img/s "
                f"(first step {r['first_step_s']:.1f} s)")
        except Exception as e:  # noqa: BLE001  (no C++ compiler for inductor, and kin)
            out["step_tuned"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            log(f"pytorch: {name} failed: {type(e).__name__}")
    rates = {n: r["images_per_s"] for n, r in out["step_tuned"].items() if "images_per_s" in r}
    if rates:
        best = max(rates, key=rates.get)
        out["step_best"] = {"variant": best, "images_per_s": rates[best]}

    # Full epochs, as the original notebooks' train(): the loader's workers
    # start with every epoch, and the accuracy is read back every step.
    torch.manual_seed(0)
    model = torch_reference.build("model6").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_epoch = []
    for epoch in range(spec["epochs_measured"]):
        model.train()
        sync()
        t = time.perf_counter()
        correct = processed = 0
        total_loss = 0.0
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            y_pred, loss = train_step(data, target)
            correct += y_pred.argmax(dim=1).eq(target).sum().item()
            total_loss += loss.item() * len(data)
            processed += len(data)
        sync()
        per_epoch.append(time.perf_counter() - t)
        log(f"pytorch: epoch {epoch + 1}: {per_epoch[-1]:.2f} s "
            f"(train loss {total_loss / processed:.4f}, acc {100 * correct / processed:.2f}%)")
    out["epoch"] = epoch_summary(per_epoch, len(train_ds), steps=len(train_loader))

    # Evaluation, as the original test(): through the test loader.
    model.eval()
    sync()
    t = time.perf_counter()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            correct += output.argmax(dim=1).eq(target).sum().item()
    sync()
    seconds = time.perf_counter() - t
    n = len(test_ds)
    out["eval"] = {"seconds": seconds, "images": n, "images_per_s": n / seconds,
                   "batch_size": spec["torch_eval_batch_size"],
                   "test_loss": test_loss / n, "test_acc": 100.0 * correct / n}
    log(f"pytorch: evaluation of {n:,} images {seconds:.3f} s (acc {100 * correct / n:.2f}%)")

    out.update(maxrss())
    out["device"] = str(device)
    out["threads"] = torch.get_num_threads()
    if use_cuda:
        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out["device_kind"] = torch.cuda.get_device_name()
    return out


# --------------------------------------------------------------------------
# The parent: data for PyTorch, the two workers, the table and the JSON
# --------------------------------------------------------------------------


def run_worker(name: str, spec: dict) -> dict:
    """Run one side in a fresh interpreter; its result comes back as JSON."""
    with tempfile.TemporaryDirectory(prefix="s7jax-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        spec = {**spec, "result": str(result_path)}
        cmd = [sys.executable, "-m", "s7jax.cli.bench", "--worker", name,
               "--worker-spec", json.dumps(spec)]
        t = time.perf_counter()
        # The worker imports this very s7jax, installed or from a checkout.
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0 or not result_path.is_file():
            raise SystemExit(f"error: the {name} side of the bench failed (exit {proc.returncode})")
        result = json.loads(result_path.read_text())
        result["wall_s"] = time.perf_counter() - t
        return result


def torch_missing() -> str | None:
    for module in ("torch", "torchvision"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def export_arrays(spec: dict, path: Path) -> None:
    """The uint8 MNIST arrays of ``load_mnist`` for the PyTorch worker (which
    thus never imports TensorFlow)."""
    import numpy as np

    from s7jax import data

    splits = data.load_mnist(spec["data_dir"], spec["manual_dir"])
    tr, te = splits["train"].subset(spec["train_images"]), splits["test"].subset(spec["test_images"])
    np.savez(path, train_images=tr.images, train_labels=tr.labels,
             test_images=te.images, test_labels=te.labels)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "tensorflow", "tensorflow-cpu",
                "tensorflow-datasets", "numpy", "torch", "torchvision", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "machine": platform.machine(), "loadavg_before": list(os.getloadavg())}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def ratios(j: dict, t: dict | None) -> dict:
    """s7jax over PyTorch speed (>1: s7jax faster)."""
    if not t:
        return {}
    out = {"step": j["step_images_per_s"] / t["step_images_per_s"],
           "eval": j["eval"]["images_per_s"] / t["eval"]["images_per_s"]}
    for key in ("epoch_tfds", "epoch_tfds_grouped", "epoch_device", "epoch_scan"):
        if j.get(key):  # the tf.data epochs are absent where TensorFlow is
            out[key] = j[key]["images_per_s"] / t["epoch"]["images_per_s"]
    return {k: round(v, 3) for k, v in out.items()}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from s7jax.benchreport import text_table

    spec = {"batch_size": BATCH_SIZE, "steps": args.steps, "warmup": args.warmup,
            "epochs_measured": args.epochs_measured, "data_dir": args.data_dir,
            "manual_dir": args.manual_dir, "train_images": args.train_images,
            "test_images": args.test_images, "torch_workers": TORCH_WORKERS,
            "tuned_torch": args.tuned_torch,
            "torch_eval_batch_size": TORCH_EVAL_BATCH_SIZE}
    result = {"command": shlex.join(["python", "scripts/bench.py", *argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "git_commit": git_commit(), "machine": machine(),
              "versions": versions()}
    skipped = "--skip-torch" if args.skip_torch else torch_missing()

    log("s7jax side...")
    j = run_worker("s7jax", spec)
    t = None
    if skipped:
        log(f"PyTorch side skipped: {skipped}")
    else:
        with tempfile.TemporaryDirectory(prefix="s7jax-bench-") as tmp:
            arrays = Path(tmp) / "mnist.npz"
            export_arrays(spec, arrays)
            log("PyTorch side...")
            t = run_worker("pytorch", {**spec, "arrays": str(arrays)})

    device = j["backend"]
    result.update({
        "device": device,
        "settings": {**{k: v for k, v in spec.items() if k not in ("data_dir", "manual_dir")},
                     "eval_batch_size": EVAL_BATCH_SIZE,
                     # An s7jax epoch drops the last partial batch, the
                     # original DataLoader keeps it: rates are per image.
                     "train_images": j["train_images"], "test_images": j["eval"]["images"]},
        "s7jax": j, "pytorch": t, "pytorch_skipped": skipped, "ratios": ratios(j, t),
    })
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    if device != "cpu":
        result["machine"]["accelerator"] = f"{j['device_count']} x {j['device_kind']}"

    print()
    print(text_table(result))
    if args.out:
        out = Path(args.out)
    elif args.quick:
        out = Path(tempfile.gettempdir()) / f"bench-{device}-quick.json"
    else:
        out = Path("results") / f"bench-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def worker_main(args: argparse.Namespace) -> int:
    spec = json.loads(args.worker_spec)
    result = run_s7jax(spec) if args.worker == "s7jax" else run_pytorch(spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with exit_on_known_errors():
        return worker_main(args) if args.worker else run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
