"""The tools beside the library (tools/): kept apart from it, and the
benchmarks' shared clock, environment record and result file."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tools.bench import measure

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return modules


def test_the_library_and_its_commands_never_import_the_tools():
    package = ROOT / "s7jax"
    offenders = [str(p.relative_to(ROOT)) for p in package.rglob("*.py")
                 if any(m == "tools" or m.startswith("tools.") for m in imported_modules(p))]
    assert offenders == []
    # Nor does anything they import at run time.
    code = ("import sys; import s7jax.training.train, s7jax.training.seeds, s7jax.reference.referee, s7jax.runs.weights, "
            "s7jax.cli.train, s7jax.cli.sweep, s7jax.cli.referee; "
            "print(sorted(m for m in sys.modules if m == 'tools' or m.startswith('tools.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_timed_times_the_first_call_alone_then_samples_of_calls():
    calls, synced = [], []

    def fn():
        calls.append(len(calls))
        return len(calls)

    t = measure.timed(fn, 3, calls=4, warmup=2, sync=lambda r: synced.append(r) or r)
    assert len(calls) == 1 + 2 + 3 * 4
    assert len(t.seconds) == 3 and t.first_s >= 0 and t.result == 15
    # Blocked after the first call, each warm-up call, and each sample's last.
    assert synced == [1, 2, 3, 7, 11, 15]
    assert t.median == sorted(t.seconds)[1] and t.best == min(t.seconds)
    assert measure.clock(lambda: 42, sync=lambda r: r)[1] == 42


def test_the_environment_record_is_the_runs_with_the_benchmarks_additions():
    env = measure.environment(with_jax=False, extra="x")
    assert {"python", "cpu_count", "cpu", "loadavg_before", "cpu_model", "extra"} <= set(env)
    assert "jax" not in env and "backend" not in env  # a parent leaves the devices alone
    env = measure.environment()
    assert {"jax", "flax", "backend", "devices", "device_count", "device_kind"} <= set(env)


def test_write_result_writes_to_results_by_backend_unless_told(tmp_path, capsys):
    path = measure.write_result({"backend": "cpu", "x": 1}, None, "step", tmp_path / "results")
    assert path == tmp_path / "results" / "step-cpu.json"
    assert json.loads(path.read_text()) == {"backend": "cpu", "x": 1}
    assert capsys.readouterr().out == f"wrote {path}\n"
    assert measure.write_result([1], tmp_path / "rows.json", "refusals") == tmp_path / "rows.json"
