"""The examples run as a user would run them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_seed_classifier_runs_and_its_loss_falls():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "seed_classifier.py")], capture_output=True,
                          text=True, timeout=300, check=True)
    losses = [float(x) for x in re.findall(r"^Epoch \[\d+/10\], Loss: ([0-9.]+)$", proc.stdout, re.M)]
    assert len(losses) == 10
    assert losses[-1] < 0.8 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
