"""Runs s7jax.cli.show_augmentations (s7jax-show-augmentations) from a checkout; --help lists its flags."""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
runpy.run_module("s7jax.cli.show_augmentations", run_name="__main__")
