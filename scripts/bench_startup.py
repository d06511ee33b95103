"""Runs tools.bench.startup from a checkout; --help lists its flags."""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
runpy.run_module("tools.bench.startup", run_name="__main__")
