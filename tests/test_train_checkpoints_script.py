"""The checkpoint script still trains, and gives numbers that match a shipped checkpoint.

CI retrains the cheapest shipped checkpoint (`fives_single_step`: the inner network acting once,
about 20 s) with `--check`, which compares the final training loss with the shipped history's
to a relative 1e-3 (not bitwise: the numbers may drift with torch versions and samplers).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_checkpoints.py"


def run_script(*arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], cwd=ROOT, capture_output=True, text=True)


def test_retraining_the_single_step_checkpoint_matches_the_shipped_one():
    result = run_script("fives_single_step", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fives_single_step: largest weight difference" in result.stdout


def test_unknown_checkpoint_names_are_refused():
    result = run_script("fifths")
    assert result.returncode == 2
    assert "unknown checkpoint(s) ['fifths']" in result.stderr
