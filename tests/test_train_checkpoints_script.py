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


def test_a_judge_check_compares_what_the_judge_says(monkeypatch, capsys):
    """`--check` on a judge retrains it (here: a stand-in that returns the shipped judge itself, then
    one with a weight changed) and compares its test accuracy and probabilities with the shipped one's."""
    import importlib.util

    import torch

    from helpers.classifier import JUDGES, ClassifierResult, heldout_accuracy, judge_path, load_judge

    spec = importlib.util.spec_from_file_location("train_checkpoints_under_test", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    name = "judge_allconv"
    shipped, _ = load_judge(judge_path(JUDGES["all-conv judge"]))
    monkeypatch.setattr(script, "train_classifier", lambda **_: ClassifierResult(shipped, heldout_accuracy(shipped)))
    assert script.train_judge(name, check=True)
    assert capsys.readouterr().out.count(" ok\n") == 2
    broken, _ = load_judge(judge_path(JUDGES["all-conv judge"]))
    with torch.no_grad():
        broken.out.bias[5] += 5.0  # calls far more images a 5
    monkeypatch.setattr(script, "train_classifier", lambda **_: ClassifierResult(broken, heldout_accuracy(broken)))
    assert not script.train_judge(name, check=True)
    assert "FAILED" in capsys.readouterr().out
