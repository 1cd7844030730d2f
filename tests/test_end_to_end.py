"""`aitimestepper both` on a tiny config, as a user runs it: a new process, JSON on stdout."""
import json
import os
import subprocess
import sys
from pathlib import Path

import aitimestepper
from _product import BACKEND

# The child process must import the same aitimestepper as this one (installed or source tree).
PACKAGE_PARENT = Path(aitimestepper.__file__).resolve().parents[1]


def test_both_end_to_end(tmp_path):
    (tmp_path / "tiny.toml").write_text(f"""
backend = "{BACKEND}"
hidden_dims = [8, 8]
dropout = 0.0
e_min = 0.3
e_max = 0.3
save_name = "e2e"
[train]
epochs = 3
steps_per_epoch = 2
lr = 3e-2
min_replay_size = 2
replay_steps = 2
[simulate]
Nperiod = 0.5
plot = "orbit.png"
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "aitimestepper", "both", "--config", "tiny.toml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 1 and records[0]["mode"] == "ml" and not records[0]["diverged"]
    assert "Training Complete" in done.stderr
    assert (tmp_path / "data" / "e2e" / "model" / "model_epoch_0002.pt").is_file()
    assert (tmp_path / "data" / "e2e" / "metrics.jsonl").is_file()
    assert (tmp_path / "orbit.png").stat().st_size > 0
