"""The checkpoint script still trains, and gives numbers that match a shipped checkpoint.

CI retrains the cheapest shipped checkpoint (`fives_single_step`: the inner network acting once,
about 10 s) with `--check`, which compares what the retrained network does with what the shipped
one does (final training loss, held-out outer loss, per-step similarity ratio), each within the
script's CHECK_TOLERANCE, set from the spread between floating-point paths that
benchmarks/retraining.py measured (its weights are not compared: over 800 Adam steps rounding
differences between processors grow as large as the differences between seeds).
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
    for measure in ("final training loss", "held-out outer loss", "held-out similarity ratio"):
        line = next((line for line in result.stdout.splitlines() if line.startswith(f"fives_single_step: {measure} ")), None)
        assert line is not None, f"no line for {measure!r} in:\n{result.stdout}"
        assert line.endswith(" ok"), line


def test_unknown_checkpoint_names_are_refused():
    result = run_script("fifths")
    assert result.returncode == 2
    assert "unknown checkpoint(s) ['fifths']" in result.stderr
