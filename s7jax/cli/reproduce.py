"""Re-run a recorded run from its config.json and check that it repeats.

    python scripts/reproduce.py results/model6/seed-3

compares every figure of the repeat's ``metrics.jsonl`` but the seconds with
the recorded one, writes the verdict to ``<run>/reproduce.json``, and exits 0
when the run repeated exactly, 1 when it did not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from s7jax.cli import OneLineErrorParser, add_data_flags, add_progress_flag, command
from s7jax.errors import ConfigError
from s7jax.runs import runfiles
from s7jax.training.train import train_and_evaluate


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory with config.json and metrics.jsonl")
    p.add_argument("--workdir", help="where the repeat goes (default runs/reproduce-...)")
    add_data_flags(p)
    add_progress_flag(p)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for the verdict
    return args


def core_count_note(recorded_env: dict, here_cpu: dict | None) -> str | None:
    """A note for before the repeat when a CPU run was recorded with another
    number of usable cores than this process has (XLA:CPU splits its sums by
    the threads it gets, so the last bits would change); None otherwise."""
    if recorded_env.get("backend") != "cpu" or here_cpu is None:
        return None
    cores = (recorded_env.get("cpu") or {}).get("cores_usable", recorded_env.get("cpu_count"))
    here = here_cpu["cores_usable"]
    if cores is None or cores == here:
        return None
    fix = (f"`taskset -c 0-{cores - 1}` in front of the command gives it {cores}" if cores < here
           else "this machine cannot give it as many")
    return (f"note: the run was recorded on {cores} usable core{'s' * (cores != 1)} and this "
            f"process has {here}, so it may not repeat exactly ({fix})")


def run(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not runfiles.config_path(run).is_file():
        raise ConfigError(f"{run}: no config.json there (not a run directory)")
    expected = runfiles.read_metrics(run)
    if not expected:
        raise ConfigError(f"{run}: no metrics.jsonl rows to compare with")
    recorded = runfiles.read_record(run)
    config = runfiles.read_config(run)
    workdir = Path(args.workdir) if args.workdir else runfiles.unique_dir(
        Path("runs"), f"reproduce-{config.model}-seed-{config.seed}")
    print(f"repeating {run} ({config.model}, seed {config.seed}, {config.epochs} epochs) "
          f"in {workdir}")
    if note := core_count_note(recorded["environment"], runfiles.cpu_identity()):
        print(note)
    actual = train_and_evaluate(config, workdir, data_dir=args.data_dir,
                                manual_dir=args.manual_dir, show_progress=not args.no_progress)
    differences = runfiles.metric_differences(expected, actual)
    here = runfiles.environment()
    recorded_cpu = recorded["environment"].get("cpu")
    if recorded_cpu is not None:  # an older record: the cores of its machine were its own
        recorded_cpu = {"cores_usable": recorded["environment"].get("cpu_count"), **recorded_cpu}
    verdict = {
        "command": "python scripts/reproduce.py " + shlex.join(args.argv),
        "date": time.strftime("%Y-%m-%d"), "reproduced": not differences,
        "epochs_compared": min(len(expected), len(actual)),
        "compared": [k for k in runfiles.METRIC_KEYS if k not in runfiles.TIMING_KEYS],
        "differences": differences, "recorded_environment": recorded["environment"],
        "repeat_environment": here,
        "same_cpu": None if recorded_cpu is None else all(  # the fields it recorded
            (here["cpu"] or {}).get(k) == v for k, v in recorded_cpu.items())}
    (run / "reproduce.json").write_text(json.dumps(verdict, indent=2) + "\n")
    if differences:
        print(f"NOT reproduced: {len(differences)} differences, first: {differences[0]}")
        if not verdict["same_cpu"]:
            print("note: the recorded run's CPU "
                  + ("is not recorded" if recorded_cpu is None else f"was {recorded_cpu}")
                  + f"; this one is {here['cpu']}. XLA's CPU kernels may sum in another order on "
                    "another CPU model or core count: the last bits change from the first step")
        print(f"wrote {run / 'reproduce.json'}")
        return 1
    print(f"reproduced: all {verdict['epochs_compared']} epochs of {run} repeat exactly "
          f"(every figure but the seconds); wrote {run / 'reproduce.json'}")
    return 0


main = command(parse_args, run, compile_cache=True)


if __name__ == "__main__":
    sys.exit(main())
