"""Run folders that hold one run, and every fault as one line with nothing
already saved lost: the folder lock, damaged and mismatched checkpoints,
write failures (a full disk included), damaged data at every layer."""

from __future__ import annotations

import errno
import gc
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import re
import sys
import warnings
from pathlib import Path

import jax
import pytest

from s7jax import data
from s7jax.runs import checkpoint, runfiles, runlock, weights
from s7jax.config import default_config
from s7jax.errors import (CheckpointError, ConfigError, DataError, NonFiniteLossError, Terminated,
                          WriteError)
from s7jax.training.train import train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(epochs=2, train_subset=256, test_subset=128, batch_size=64, eval_batch_size=128,
            precise_bn=128)
TINY_FLAGS = ["--epochs", "2", "--train-subset", "256", "--test-subset", "128", "--batch-size",
              "64", "--eval-batch-size", "128", "--precise-bn", "128", "--no-progress"]
quiet = dict(show_progress=False, log=lambda _: None)


def script(name, *args, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def last_line(result, code):
    """The last line on stderr of an ``in_process`` command that ended with ``code``."""
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


def one_line_error(proc, code):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1]


# --------------------------------------------------------------------------
# A run folder belongs to one run
# --------------------------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds a run \(config.json, checkpoints/\); "
                                          r"pass --resume .* or --overwrite"):
        with runlock.claim(tmp_path):
            pass
    assert (tmp_path / "config.json").is_file()  # refused: nothing touched
    with runlock.claim(tmp_path, resume=True):
        assert (tmp_path / "checkpoints" / "8").is_dir()
    with runlock.claim(tmp_path, overwrite=True):
        assert not (tmp_path / "config.json").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's files go


def test_a_file_where_the_checkpoints_folder_goes_is_refused_up_front(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file where the run's checkpoints folder goes"):
        with runlock.claim(tmp_path):
            pass


def test_a_live_holder_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from s7jax.runs import runlock\n"
         "with runlock.claim(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by process {holder.pid} on "):
            with runlock.claim(tmp_path):
                pass
    finally:
        holder.kill()  # no clean exit: the kernel drops its lock
        holder.wait()
    assert (tmp_path / runlock.LOCK_NAME).is_file()  # the stale lock file is still there
    with runlock.claim(tmp_path):
        assert f"process {os.getpid()} " in (tmp_path / runlock.LOCK_NAME).read_text()


def test_default_folders_are_unique_within_a_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runfiles.time, "strftime", lambda fmt: "20000101-000000")  # one second
    made = [runfiles.unique_dir(tmp_path, "model6") for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert made[1].name == made[0].name + "-2"


@pytest.mark.slow
def test_two_launches_into_one_folder_one_is_refused(tfds_dir, tmp_path):
    workdir = tmp_path / "run"
    procs = [script("train.py", *TINY_FLAGS, "--workdir", workdir, "--data-dir", tfds_dir)
             for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    (loser_err,) = [err for p, _, err in results if p.returncode == 2]
    assert "Traceback" not in loser_err
    assert ("is in use by " in loser_err) or ("already holds a run" in loser_err)
    assert [r["epoch"] for r in runfiles.read_metrics(workdir)] == [1, 2]
    assert checkpoint.all_steps(runfiles.checkpoint_dir(workdir)) == [4, 8]


def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(in_process, tmp_path):
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    workdir = tmp_path / "run"
    line = last_line(in_process("train", *TINY_FLAGS, "--workdir", workdir, "--manual-dir",
                                empty, "--data-source", "idx"), 2)
    assert "missing" in line and not workdir.exists()


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    history = train_and_evaluate(default_config("model6", **TINY), workdir, data_dir=tfds_dir, **quiet)
    return workdir, history


def copy_run(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


def damage(workdir, step):
    for f in (runfiles.checkpoint_dir(workdir) / str(step) / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_no_intact_checkpoint_is_one_line(finished, tfds_dir, tmp_path):
    workdir = copy_run(finished, tmp_path)
    damage(workdir, 8)
    damage(workdir, 4)
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*step 8: .*step 4: ") as e:
        train_and_evaluate(default_config("model6", **TINY), workdir, resume=True,
                           data_dir=tfds_dir, **quiet)
    assert "\n" not in str(e.value)
    assert strip(runfiles.read_metrics(workdir)) == strip(finished[1])  # nothing rewritten


def test_a_checkpoint_of_another_model_is_one_line_from_evaluate(in_process, finished, tfds_dir,
                                                                 tmp_path):
    workdir = copy_run(finished, tmp_path)
    recorded = json.loads((workdir / "config.json").read_text())
    recorded["config"]["model"] = "model5"
    (workdir / "config.json").write_text(json.dumps(recorded))
    line = last_line(in_process("evaluate", "--checkpoint", workdir, "--data-dir", tfds_dir), 2)
    assert "does not fit the model and optimiser" in line and "step 8" in line


def test_evaluate_without_checkpoints_says_so(in_process, tmp_path):
    runfiles.write_config(tmp_path, default_config("model6"))
    line = last_line(in_process("evaluate", "--checkpoint", tmp_path), 2)
    assert line == f"error: no checkpoint in {tmp_path / 'checkpoints'}"


def test_resume_refuses_config_flags_rather_than_ignore_them(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    line = one_line_error(script("train.py", "--resume", workdir, "--lr", "5", "--epochs", "5",
                                 "--model", "model1"), 2)
    assert "drop --epochs, --lr, --model" in line


# --------------------------------------------------------------------------
# A run is complete only when the files it promises are there and whole
# --------------------------------------------------------------------------


def killed_before_its_weights(finished, workdir):
    """The run as a SIGKILL after its last checkpoint leaves it: no weights,
    its last row perhaps not yet written."""
    shutil.copytree(finished[0], workdir)
    runfiles.weights_path(workdir).unlink()
    runfiles.write_metrics(workdir, finished[1][:-1])
    return workdir


def test_resume_of_a_run_killed_before_its_weights_writes_them(in_process, finished, tfds_dir,
                                                               tmp_path):
    workdir = killed_before_its_weights(finished, tmp_path / "run")
    result = in_process("train", "--resume", workdir, "--data-dir", tfds_dir, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert runfiles.weights_path(workdir).read_bytes() == runfiles.weights_path(
        finished[0]).read_bytes()
    assert strip(runfiles.read_metrics(workdir)) == strip(finished[1])


def test_the_sweep_does_not_skip_a_seed_killed_before_its_weights(in_process, finished, tfds_dir,
                                                                  tmp_path):
    results = tmp_path / "results"
    workdir = killed_before_its_weights(finished, results / "model6" / "seed-0")
    result = in_process("sweep", *TINY_FLAGS, "--seeds", "1", "--results", results,
                        "--data-dir", tfds_dir)
    assert result.returncode == 0 and "skipped" not in result.stdout, result.stderr[-2000:]
    assert weights.verified(runfiles.weights_path(workdir))


@pytest.mark.parametrize("fault,code,pattern", [
    (Terminated(), 143, r"error: terminated \(SIGTERM\) at step 8; checkpoint saved, continue "
                        r"with --resume .*run"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2,
     r"error: could not write .*run/weights\.msgpack: No space left on device"),
], ids=["sigterm", "full-disk"])
def test_a_fault_while_the_weights_are_written_leaves_a_run_to_resume(
        in_process, finished, tfds_dir, tmp_path, monkeypatch, fault, code, pattern):
    workdir = killed_before_its_weights(finished, tmp_path / "run")
    replace = Path.replace

    def replace_or_fail(self, target):  # the .tmp file written, not yet renamed
        if self.name.endswith(".tmp"):
            raise fault
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", replace_or_fail)
    args = ("train", "--resume", workdir, "--data-dir", tfds_dir, "--no-progress")
    assert re.fullmatch(pattern, last_line(in_process(*args), code))
    assert [p.name for p in workdir.iterdir() if "weights" in p.name] == []
    monkeypatch.setattr(Path, "replace", replace)
    assert in_process(*args).returncode == 0
    assert weights.verified(runfiles.weights_path(workdir))


# --------------------------------------------------------------------------
# Write failures
# --------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a 64 KiB tmpfs (config.json fits, a checkpoint does not);
    where mounting is not allowed, checkpoint writes raise ENOSPC instead."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                             str(mount)], capture_output=True).returncode == 0:
        yield mount
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        return
    import orbax.checkpoint as ocp

    def no_space(self, step, *args, **kwargs):  # as a full disk leaves it: a partial folder
        (Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1" / "state").mkdir(parents=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    yield mount


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(full_disk, tfds_dir):
    workdir = full_disk / "run"
    with pytest.raises(WriteError, match=r"could not save checkpoint step 4 in .*run/checkpoints: "
                                         r".*(No space left on device|ENOSPC|space)") as e:
        train_and_evaluate(default_config("model6", **TINY), workdir, data_dir=tfds_dir, **quiet)
    assert "\n" not in str(e.value)
    leftovers = list(runfiles.checkpoint_dir(workdir).glob("*orbax-checkpoint-tmp*"))
    assert leftovers == []
    assert runfiles.read_metrics(workdir) == []  # no row for an epoch without its checkpoint


def test_after_a_failed_save_orbaxs_unawaited_coroutines_stay_quiet():
    """A failed write leaves Orbax coroutines that are collected (and warned
    of) at any time up to the interpreter's exit; other work still warns."""
    async def never_run():
        pass

    def collect_one():
        coroutine = never_run()
        del coroutine
        gc.collect()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        collect_one()
        assert [w for w in seen if "never awaited" in str(w.message)]  # warned before any fault
        seen.clear()
        with pytest.raises(OSError), checkpoint._leftovers_silenced():
            raise OSError(errno.ENOSPC, "No space left on device")
        collect_one()
        assert [str(w.message) for w in seen] == []


# --------------------------------------------------------------------------
# Data faults, and what is checked before any data loads
# --------------------------------------------------------------------------


def test_damaged_idx_files_are_caught_before_tensorflow_loads(tmp_path):
    manual = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), manual)
    name = "train-images-idx3-ubyte.gz"
    raw = gzip.compress(gzip.decompress((manual / name).read_bytes())[:1000])
    (manual / name).chmod(0o644)
    (manual / name).write_bytes(raw)
    (manual / "SHA256SUMS").chmod(0o644)
    sums = [line for line in (manual / "SHA256SUMS").read_text().splitlines() if name not in line]
    (manual / "SHA256SUMS").write_text("\n".join(sums + [f"{hashlib.sha256(raw).hexdigest()}  {name}"]))
    with pytest.raises(DataError, match=f"corrupt MNIST file .*{name}"):
        data.prepare_mnist(data_dir=tmp_path / "tfds", manual_dir=manual)
    assert not (tmp_path / "tfds").exists()  # TFDS never started


@pytest.mark.slow
@pytest.mark.tfds
@pytest.mark.parametrize("damaged", ["*test.tfrecord*", "dataset_info.json"])
def test_a_damaged_tfds_cache_is_rebuilt_from_the_files(tfds_dir, tmp_path, capfd, damaged):
    copy = tmp_path / "tfds"
    shutil.copytree(tfds_dir, copy)
    (record,) = sorted((copy / "mnist").rglob(damaged))[:1]
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 3])
    splits = data.load_mnist(data_dir=copy)
    assert (len(splits["train"]), len(splits["test"])) == (60_000, 10_000)
    assert "cannot be read" in capfd.readouterr().err


@pytest.mark.parametrize("flags,pattern", [
    (["--seed", "-1"], r"--seed must be in 0\.\.2147483647, got -1"),
    (["--degrees", "400"], r"--degrees must be in 0\.\.180, got 400"),
    (["--train-subset", "70000"], r"--train-subset must be in 1\.\.60000, got 70000"),
    (["--batch-size", "70000"], r"--batch-size 70000 exceeds the 60,000 training images"),
    (["--epochs", "0", "--allow-long"], r"--epochs must be in 1\.\.15 \(the study's rule\), got 0$"),
    (["--epochs", "16"], r"got 16; pass --allow-long to train longer$"),
])
def test_settings_are_checked_before_anything_is_loaded_or_written(in_process, flags, pattern,
                                                                   tmp_path):
    line = last_line(in_process("train", *flags, "--workdir", tmp_path / "run"), 2)
    assert re.search(pattern, line), line
    assert not (tmp_path / "run").exists()  # refused before the folder was made


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_jax_platforms_naming_an_absent_device_is_one_line(in_process, tmp_path, monkeypatch,
                                                           command):
    def no_gpu(*args, **kwargs):
        raise AssertionError  # what JAX raises where CUDA finds no GPU

    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setattr(jax, "devices", no_gpu)
    args = {"train": [*TINY_FLAGS, "--workdir", tmp_path / "run"],
            "evaluate": ["--weights", ROOT / "results" / "model6" / "seed-0" / "weights.msgpack"]}
    line = last_line(in_process(command, *args[command]), 2)
    assert line == "error: JAX_PLATFORMS=cuda but no cuda device: none found"
    assert not (tmp_path / "run").exists()


def test_the_non_finite_message_says_what_is_kept():
    assert str(NonFiniteLossError(1, 3)).endswith("no checkpoint was saved before it")
    assert str(NonFiniteLossError(2, 20, kept=16)).endswith(
        "the last good checkpoint, step 16, is kept")


@pytest.mark.slow
@pytest.mark.tfds  # --data-source tfds
def test_a_data_error_is_exactly_one_line_without_a_needless_hint(tmp_path):
    """With --manual-dir given, the message does not suggest passing it; and
    the files are checked before TensorFlow (and its log lines) load."""
    manual = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), manual)
    (manual / "t10k-labels-idx1-ubyte.gz").unlink()
    proc = script("train.py", *TINY_FLAGS, "--workdir", tmp_path / "run", "--manual-dir", manual,
                  "--data-source", "tfds", "--data-dir", tmp_path / "tfds")
    line = one_line_error(proc, 2)
    assert "missing MNIST file" in line and "--manual-dir" not in line
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow  # ~7 s each; the quick part checks such refusals in-process
@pytest.mark.parametrize("source", ["auto", "idx"])
def test_a_data_error_is_the_only_line_on_stderr(tmp_path, source):
    """Nothing else (TensorFlow's start-up log lines included) comes before it:
    the files are checked before TensorFlow loads."""
    manual = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), manual)
    (manual / "SHA256SUMS").unlink()
    proc = script("train.py", *TINY_FLAGS, "--workdir", tmp_path / "run", "--manual-dir", manual,
                  "--data-source", source, "--data-dir", tmp_path / "tfds")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: missing {manual / 'SHA256SUMS'}: restore the official MNIST files in {manual} "
        "(see s7jax/mnist_files/README.md)"]


def test_only_the_first_process_of_a_multi_host_run_writes_the_run_files(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with runlock.claim(tmp_path / "run") as workdir:  # the first host claims it, not this one
        runfiles.write_config(workdir, default_config("model6"))
        runfiles.append_metrics(workdir, {"epoch": 1})
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# First contact: what a recorded run, config.json, a signal or a second
# process must not be able to break, each fault one line
# --------------------------------------------------------------------------


def snapshot(folder):
    """Every file under ``folder`` with its bytes: to show nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def only_line(proc, code):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_resume_of_a_recorded_run_without_checkpoints_leaves_it_as_it_was(tmp_path):
    """Every run under results/ keeps its metrics but not its checkpoints:
    --resume must not train it again from step 0 over its record."""
    recorded = tmp_path / "seed-0"
    shutil.copytree(ROOT / "results" / "model6" / "seed-0", recorded)
    before = snapshot(recorded)
    line = only_line(script("train.py", "--resume", recorded), 2)
    assert line == (f"error: --resume {recorded}: no checkpoint in {recorded / 'checkpoints'} to "
                    "continue its 15 recorded epoch(s) from; the run is left as it was (to train "
                    "it again, use scripts/reproduce.py or a new --workdir)")
    assert snapshot(recorded) == before
    assert sorted(p.name for p in recorded.iterdir()) == sorted(
        p.name for p in (ROOT / "results" / "model6" / "seed-0").iterdir())  # no .lock left


@pytest.mark.parametrize("edit,pattern", [
    (lambda c: c.pop("precise_bn"), r"settings missing: precise_bn \(a run records all of them"),
    (lambda c: c.update(epochs=20), r"--epochs must be in 1\.\.15 .*got 20; pass --allow-long"),
    (lambda c: c.update(lr="0.1"), r"lr must be a float, got '0\.1'"),
    (lambda c: c.update(seed=-1), r"--seed must be in 0\.\.2147483647, got -1"),
    (lambda c: c.update(seed=True), r"seed must be an int, got True"),
    (lambda c: c.update(train_subset=1.5), r"train_subset must be an int or null, got 1\.5"),
    (lambda c: c["augment"].pop("degrees"), r"augment must hold exactly degrees, brightness"),
    (lambda c: c.update(lr=float("inf")), r"--lr must be positive and finite, got inf"),
])
def test_config_json_is_checked_like_the_flags(finished, tmp_path, edit, pattern):
    workdir = copy_run(finished, tmp_path)
    record = json.loads((workdir / "config.json").read_text())
    edit(record["config"])
    (workdir / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=pattern) as e:
        runfiles.read_config(workdir)
    assert str(e.value).startswith(f"{workdir / 'config.json'}: ")


def test_a_bad_config_json_stops_resume_in_one_line_touching_nothing(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    record = json.loads((workdir / "config.json").read_text())
    del record["config"]["precise_bn"]
    (workdir / "config.json").write_text(json.dumps(record))
    before = snapshot(workdir)
    line = only_line(script("train.py", "--resume", workdir), 2)
    assert "settings missing: precise_bn" in line
    assert snapshot(workdir) == before


def test_settings_added_after_a_run_was_recorded_take_the_value_it_ran_with(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    record = json.loads((workdir / "config.json").read_text())
    del record["config"]["steps_per_call"], record["config"]["data_source"]
    (workdir / "config.json").write_text(json.dumps(record))
    config = runfiles.read_config(workdir)
    assert (config.steps_per_call, config.data_source) == (1, "tfds")


def flip_middle(path, count=64):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + count] = bytes(b ^ 0x5A for b in raw[middle:middle + count])
    path.write_bytes(bytes(raw))


def flip_largest_array_file(workdir, step):
    files = [f for f in (runfiles.checkpoint_dir(workdir) / str(step) / "state").rglob("*")
             if f.is_file() and f.parent.name == "d"]
    flip_middle(max(files, key=lambda f: f.stat().st_size))


def copy_arrays(workdir, step, other):
    """Checkpoint ``step`` gets a copy of ``other``'s array files: readable,
    but not the arrays its checksum was taken on."""
    target, source = (runfiles.checkpoint_dir(workdir) / str(s) / "state" for s in (step, other))
    shutil.rmtree(target)
    shutil.copytree(source, target)


def swap_arrays(workdir, step, other):
    """Checkpoints ``step`` and ``other`` trade array files: both readable,
    neither matching its checksum."""
    a, b = (runfiles.checkpoint_dir(workdir) / str(s) / "state" for s in (step, other))
    a.rename(a.with_name("swap"))
    b.rename(a)
    a.with_name("swap").rename(b)


def edit_record(workdir, step):
    """One digit of epoch 1's test_acc changed in checkpoint ``step``'s record."""
    path = runfiles.checkpoint_dir(workdir) / str(step) / "record" / "metadata"
    record = json.loads(path.read_text())
    record["history"][0]["test_acc"] += 1
    path.write_text(json.dumps(record))


UNREADABLE = "its array files cannot be read"
MISMATCH = "its arrays do not match the checksum saved with them"
# Where 64 flipped bytes land decides which check sees them: inside an array's
# compressed chunk they may break its decoding (as on the CI's machine, whose
# rounding gives other bytes) or decode to other numbers. Either way, caught.
EITHER = f"({UNREADABLE}|{MISMATCH})"


@pytest.mark.parametrize("spoil,reason", [
    (lambda workdir: damage(workdir, 8), UNREADABLE),
    pytest.param(lambda workdir: flip_largest_array_file(workdir, 8), EITHER,  # same size
                 marks=pytest.mark.slow),
    pytest.param(lambda workdir: copy_arrays(workdir, 8, 4), MISMATCH,  # intact, not step 8's
                 marks=pytest.mark.slow),
    (lambda workdir: edit_record(workdir, 8), "its record does not match the checksum saved with it"),
], ids=["truncated", "flipped", "swapped", "edited-record"])
def test_resume_passes_over_a_damaged_checkpoint_for_the_one_before(finished, tfds_dir, tmp_path,
                                                                    spoil, reason):
    workdir = copy_run(finished, tmp_path)
    spoil(workdir)
    said = []
    history = train_and_evaluate(default_config("model6", **TINY), workdir, resume=True,
                                 data_dir=tfds_dir, show_progress=False, log=said.append)
    expected = (rf"checkpoint step 8 in {re.escape(str(workdir / 'checkpoints'))} is damaged "
                rf"\({reason}\); restored step 4, the one before it")
    assert any(re.fullmatch(expected, s) for s in said), said
    assert strip(history) == strip(finished[1])  # epoch 2 trained again, the same
    assert strip(runfiles.read_metrics(workdir)) == strip(finished[1])


@pytest.mark.parametrize("edit", [{"train_subset": 512}, {"lr": 0.05}, {"seed": 1}],
                         ids=["train_subset", "lr", "another-seeds-checkpoints"])
def test_resume_refuses_a_checkpoint_of_another_config(in_process, finished, tmp_path, edit):
    workdir = copy_run(finished, tmp_path)
    record = json.loads(runfiles.config_path(workdir).read_text())
    record["config"].update(edit)
    runfiles.config_path(workdir).write_text(json.dumps(record))
    before = snapshot(workdir)
    line = last_line(in_process("train", "--resume", workdir, "--no-progress"), 2)
    (key, value), = edit.items()
    assert re.fullmatch(rf"error: --resume {re.escape(str(workdir))}: its checkpoint step 8 was "
                        rf"made with another config: {key} \S+ \(config.json: {value}\); the run "
                        "is left as it was", line), line
    assert snapshot(workdir) == before


@pytest.mark.parametrize("command", ["reproduce", "sweep", "train"])
def test_a_flipped_byte_in_metrics_jsonl_is_one_line_naming_it(in_process, finished, tmp_path,
                                                              command):
    results = tmp_path / "results"
    workdir = results / "model6" / "seed-0"
    shutil.copytree(finished[0], workdir)
    shutil.rmtree(runfiles.checkpoint_dir(workdir))  # as a run under results/ keeps it
    path = runfiles.metrics_path(workdir)
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\n") + 1] ^= 0x20  # line 2's "{"
    path.write_bytes(bytes(raw))
    args = {"reproduce": [workdir], "train": ["--resume", workdir],
            "sweep": [*TINY_FLAGS, "--seeds", "1", "--results", results]}[command]
    line = last_line(in_process(command, *args), 2)
    assert line == f"error: {path}, line 2: not a JSON object (a damaged file)"


@pytest.mark.parametrize("how,reason", [
    ("flipped", EITHER), ("truncated", UNREADABLE), ("swapped", MISMATCH)])
@pytest.mark.slow  # ~8 s each; the quick part checks the same lines in-process
def test_no_intact_checkpoint_is_the_only_line_on_stderr(finished, tmp_path, how, reason):
    """Orbax's tracebacks of a failed read (never-retrieved futures, callbacks
    into a closed event loop) stay off stderr; the run folder is untouched."""
    workdir = copy_run(finished, tmp_path)
    if how == "swapped":
        swap_arrays(workdir, 8, 4)
    else:
        for step in (8, 4):
            (flip_largest_array_file if how == "flipped" else damage)(workdir, step)
    before = snapshot(workdir)
    line = only_line(script("train.py", "--resume", workdir), 2)
    assert re.fullmatch(rf"error: no intact checkpoint in {re.escape(str(workdir / 'checkpoints'))} "
                        rf"\(step 8: {reason}; step 4: {reason}\)", line), line
    assert snapshot(workdir) == before
    line = only_line(script("evaluate.py", "--checkpoint", workdir), 2)
    assert line.startswith("error: no intact checkpoint in")


@pytest.mark.parametrize("sums,pattern", [
    (b"# written by sha256sum\n", None),
    (b"\xff\xfe not text\n", r"is not a text file of checksums \(not UTF-8\)"),
    (b"abc  train-images-idx3-ubyte.gz\n", r"SHA256SUMS, line 1: not 'SHA-256  file name'"),
])
def test_sha256sums_with_comments_or_damage_is_read_or_refused_in_one_line(tmp_path, sums, pattern):
    manual = tmp_path / "mnist"
    shutil.copytree(data.default_manual_dir(), manual)
    (manual / "SHA256SUMS").chmod(0o644)
    (manual / "SHA256SUMS").write_bytes(sums + (manual / "SHA256SUMS").read_bytes())
    if pattern is None:
        data.verify_mnist_files(manual)
    else:
        with pytest.raises(DataError, match=pattern):
            data.verify_mnist_files(manual)


def test_a_dangling_symlink_is_named_as_such(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"is a symlink to .*gone, which does not exist"):
        with runlock.claim(link):
            pass


def test_a_symlink_loop_is_named_as_such(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(link)
    with pytest.raises(ConfigError, match=r"run is a symlink loop; remove it or choose another"):
        with runlock.claim(link):
            pass


@pytest.mark.parametrize("killed_in_first_checkpoint", [False, True])
def test_a_folder_whose_run_saved_nothing_takes_the_same_launch_again(tmp_path,
                                                                      killed_in_first_checkpoint):
    """A run killed (SIGKILL) before its first epoch ended leaves config.json
    and an empty metrics.jsonl, or during its first checkpoint Orbax's
    temporary folder too: nothing to lose, so no refusal."""
    runfiles.write_config(tmp_path, default_config("model6"))
    runfiles.write_metrics(tmp_path, [])
    if killed_in_first_checkpoint:
        (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1700000000" / "state").mkdir(parents=True)
    with runlock.claim(tmp_path):
        pass
    assert not (tmp_path / runlock.LOCK_NAME).exists()  # a run that ends removes its lock file


def test_the_sweeps_refusal_advises_what_the_sweep_has(finished, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(finished[0], results / "model6" / "seed-0")  # another config's run
    line = only_line(script("sweep.py", "--model", "model6", "--seeds", "1", "--results", results,
                            "--no-progress"), 2)
    assert "already holds a run" in line and "pass --overwrite" in line and "--resume" not in line


def test_tensorflows_start_up_banner_is_filtered_and_real_lines_kept(capfd):
    from s7jax.data import tf_cpu

    with tf_cpu.without_startup_banner():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n"
                    b"I0000 00:00:1796023131.061001    4297 port.cc:153] oneDNN custom "
                    b"operations are on.\n"
                    b"E0000 00:00:1796023131.061001    4297 real.cc:1] a real error\n")
    assert capfd.readouterr().err == "E0000 00:00:1796023131.061001    4297 real.cc:1] a real error\n"


@pytest.mark.tfds
def test_importing_tensorflow_through_s7jax_writes_nothing_to_stderr():
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                           "from s7jax.data import tfds_available; assert tfds_available()",
                           str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.slow
@pytest.mark.tfds
def test_two_first_preparations_of_one_tfds_folder_take_turns(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from s7jax import data;"
            "s = data.load_mnist(data_dir=sys.argv[2], source='tfds'); print(len(s['train']))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path / "tfds")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    assert all(p.returncode == 0 and out.split()[-1:] == ["60000"] for p, out, _ in results), \
        [err[-1500:] for _, _, err in results]
    # Prepared once: the other process waited for it, or came after and found it ready.
    assert sum(line.startswith("preparing TFDS mnist in") for _, _, err in results
               for line in err.splitlines()) == 1, [err[-1500:] for _, _, err in results]
    assert sum("waiting for another process preparing TFDS mnist" in err
               for _, _, err in results) <= 1


@pytest.mark.slow
def test_sigterm_to_the_train_script_saves_exits_143_and_resumes_exactly(finished, tfds_dir,
                                                                          tmp_path):
    """``timeout`` sends SIGTERM: the run saves the step it is at, says so in
    one line, and --resume then finishes it as if nothing had happened."""
    import signal

    workdir = tmp_path / "run"
    proc = script("train.py", *TINY_FLAGS, "--workdir", workdir, "--data-dir", tfds_dir,
                  env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each row as it is printed
    for line in proc.stdout:  # the table's header: the first of two epochs is under way
        if "train loss" in line:
            break
    proc.send_signal(signal.SIGTERM)
    line = only_line(proc, 143)
    assert re.fullmatch(rf"error: terminated \(SIGTERM\) at step \d+; checkpoint saved, "
                        rf"continue with --resume {re.escape(str(workdir))}", line), line
    resumed = script("train.py", "--resume", workdir, "--data-dir", tfds_dir, "--no-progress")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and err.strip() == "", err[-2000:]
    assert strip(runfiles.read_metrics(workdir)) == strip(finished[1])


@pytest.mark.slow
def test_a_full_disk_under_the_train_script_is_one_line(full_disk, tfds_dir):
    line = only_line(script("train.py", *TINY_FLAGS, "--workdir", full_disk / "run",
                            "--data-dir", tfds_dir), 2)
    assert re.fullmatch(r"error: could not save checkpoint step 4 in .*: "
                        r"(No space left on device|.*ENOSPC.*)", line), line


def test_a_weights_file_of_an_unknown_model_is_one_line_naming_it(in_process, tmp_path):
    from flax import serialization

    path = tmp_path / "w.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"format": weights.FORMAT, "model": "model9"}))
    line = last_line(in_process("evaluate", "--weights", path), 2)
    assert line == f"error: {path} holds an unknown model 'model9'"


@pytest.mark.parametrize("arrays", [{}, {"params": 3}, {"params": {"conv1": {"kernel": "x"}}}])
def test_a_weights_file_without_its_arrays_is_one_line(in_process, tmp_path, arrays):
    from flax import serialization

    path = tmp_path / "w.msgpack"
    path.write_bytes(serialization.msgpack_serialize(
        {"format": weights.FORMAT, "model": "model6", **arrays}))
    line = last_line(in_process("evaluate", "--weights", path), 2)
    assert line == (f"error: {path}: its arrays do not fit model6's parameters and BatchNorm "
                    "statistics")


def test_a_figure_is_written_whole_under_the_name_said(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.figure import Figure

    from s7jax.runs import plots

    written = plots.digit_grid(np.zeros((2, 28, 28)), ["a", "b"], tmp_path / "digits", columns=2)
    assert written == tmp_path / "digits.png" and written.stat().st_size > 0  # matplotlib's name

    def full_disk(self, fname, **kwargs):
        Path(fname).write_bytes(b"")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(WriteError, match=r"could not write .*curves\.png: No space left on device"):
        plots.curves([], tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.png"]  # no empty or .tmp file


@pytest.mark.parametrize("flag", ["--data-source", "--pipeline"])
def test_tfds_without_tensorflow_is_refused_before_the_banner(in_process, tmp_path, monkeypatch,
                                                              flag):
    for name in ("tensorflow", "tensorflow_datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # as tests/no_tensorflow makes it
    result = in_process("train", *TINY_FLAGS, flag, "tfds", "--workdir", tmp_path / "run")
    assert re.fullmatch(rf"error: {flag} tfds needs tensorflow and tensorflow-datasets, .*",
                        last_line(result, 2))
    assert result.stdout == "" and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("signum,code", [(2, 130), (15, 143)])
def test_a_signal_whose_exception_python_drops_still_stops_the_run(in_process, tmp_path,
                                                                    monkeypatch, signum, code):
    """A signal handled while JAX's gc callback runs (as during compilation):
    Python only reports the exception raised there, so the run must stop on
    its own record of the signal, with a checkpoint to resume."""
    from s7jax.training import loops

    create = loops.RunContext.create

    def signal_inside_a_gc_callback(*args, **kwargs):
        def callback(phase, info):
            if phase == "start":
                gc.callbacks.remove(callback)
                os.kill(os.getpid(), signum)
                sum(range(100))  # Python runs the handler here
        gc.callbacks.append(callback)
        gc.collect()
        return create(*args, **kwargs)

    monkeypatch.setattr(loops.RunContext, "create", signal_inside_a_gc_callback)
    reported = []  # what reaches Python's report of an exception it could not raise
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    result = in_process("train", *TINY_FLAGS, "--data-source", "idx", "--workdir", tmp_path / "run")
    line = last_line(result, code)
    assert re.fullmatch(r"error: (interrupted|terminated \(SIGTERM\)) at step 1; checkpoint saved, "
                        r"continue with --resume .*run", line), line
    assert not reported  # no "Exception ignored in ... _xla_gc_callback" traceback


def test_a_second_ctrl_c_during_the_exit_clean_up_prints_no_traceback(tmp_path):
    """A Ctrl-C that arrives while the exit hooks run (JAX's among them) is
    ignored: the command's one error line stays the only line on stderr."""
    driver = ("import atexit, os, signal, sys, time\n"
              "def second_ctrl_c():\n"  # registered first, so it runs after the command's hooks
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    time.sleep(0.2)\n"
              "atexit.register(second_ctrl_c)\n"
              "from s7jax.cli import train\n"
              "sys.exit(train.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", driver, "--resume", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
