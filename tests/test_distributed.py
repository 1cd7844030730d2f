"""torch.distributed under torchrun: 2 ranks on gloo compute what one process computes.

The multi-process tests start `torchrun --standalone --nproc-per-node 2` as a user would and
compare with the one-process run (in this process). Training in float64: the gradient of the
mean band loss reaches the weights as a sum of the ranks' partial sums, so it differs from one
process's in the order of float64 additions (~1e-16 relative per step); RTOL allows for that
to grow through a few dozen Adam steps, and is still ten orders of magnitude below any real
difference. Everything else (orbit states, the trajectory, the metrics) is compared exactly
where no weight enters it, and the resumed run is compared bit for bit with the uninterrupted
one on the same number of ranks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aitimestepper import distributed
from aitimestepper.cli import main as cli_main
from aitimestepper.training.replay import ReplayBuffer, Samples, merge_states

RTOL = 1e-10
HERE = Path(__file__).parent
TRAIN = ["--num-orbits", "4", "--epochs", "4", "--hidden-dims", "16", "16", "--dropout", "0", "--n-steps", "3",
         "--steps-per-epoch", "3", "--replay-steps", "5", "--min-replay-size", "4", "--replay-batch-size", "8",
         "--checkpoint-every", "2", "--seed", "3", "--history-len", "1", "--eta-init", "0.15",
         "--energy-threshold", "2e-4", "--E_upper", "1e-4", "--E_lower", "1e-6", "--lr", "1e-3"]


def torchrun(args: list[str], cwd: Path, ranks: int = 2, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, **popen)


def assert_close(value: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal to RTOL of the tensor's largest entry (a coordinate near zero has no relative scale)."""
    error = (value - expected).abs().max().item() if value.numel() else 0.0
    assert error <= RTOL * expected.abs().max().item(), f"{what}: differs by {error:.3g}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def metrics(run_dir: Path) -> list[dict]:
    timing = ("epoch_time_s", "elapsed_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training on one process (here) and on two ranks (torchrun)."""
    root = tmp_path_factory.mktemp("distributed")
    assert cli_main(["train", *TRAIN, "--output-dir", str(root / "one")]) == 0
    done = torchrun(["-m", "aitimestepper", "train", *TRAIN, "--output-dir", str(root / "two")], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_two_ranks_train_the_same_network_as_one_process(runs):
    one, two = load(runs / "one/run/model/model_epoch_0003.pt"), load(runs / "two/run/model/model_epoch_0003.pt")
    assert two["training_state"]["ranks"] == 2
    records = metrics(runs / "one/run")
    epochs = [r for r in records if "part2_status" in r]
    assert sum(r["retrain_steps"] for r in epochs) > len(epochs), "the run must retrain on failing states"
    assert any(r["part2_iterations"] for r in epochs), "the run must take Part 2 steps"
    for name, weight in one["model_state_dict"].items():
        assert_close(two["model_state_dict"][name], weight, name)
    for name in ("pos", "vel", "acc", "energy"):
        assert_close(two["training_state"][name], one["training_state"][name], name)
    for name, samples in one["training_state"]["replay"].items():
        assert_close(two["training_state"]["replay"][name], samples, f"trajectory {name}")
    assert two["training_state"]["replay_orbits"] == one["training_state"]["replay_orbits"]
    assert two["training_state"]["steps_done"] == one["training_state"]["steps_done"]
    assert two["rng"]["sampler"].equal(one["rng"]["sampler"])
    # The same attempts, acceptances and Part 2 outcomes, epoch by epoch and step by step.
    assert [{k: v for k, v in r.items() if k not in ("dt", "r")} for r in metrics(runs / "two/run")] == \
        [{k: v for k, v in r.items() if k not in ("dt", "r")} for r in records]


def test_two_ranks_simulate_prints_what_one_process_prints(runs, capsys):
    flags = ["simulate", "--model-path", str(runs / "one/run"), "--integrator-mode", "history", "--num-orbits", "5",
             "--Nperiod", "2",
             "--e-max", "0.8", "--seed", "7"]
    assert cli_main(flags) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    output = runs / "simulated.json"
    done = torchrun(["-m", "aitimestepper", *flags, "--output-json", str(output)], runs)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(alone) == 5 and printed == written  # 5 systems on 2 ranks: blocks of 3 and 2
    for one, two in zip(alone, printed):
        assert {k: v for k, v in two.items() if k != "wall_time_s"} == {k: v for k, v in one.items() if k != "wall_time_s"}


def test_a_resumed_run_after_a_kill_equals_the_uninterrupted_run(runs):
    flags = [*TRAIN, "--epochs", "24", "--checkpoint-every", "1"]
    whole = torchrun(["-m", "aitimestepper", "train", *flags, "--output-dir", "whole"], runs)
    assert whole.returncode == 0, whole.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "aitimestepper", "train", *flags, "--output-dir", "killed"]
    job = subprocess.Popen(command, cwd=runs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    models = runs / "killed/run/model"
    try:
        deadline = time.monotonic() + 90
        while not (models / "model_epoch_0003.pt").exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    saved = sorted(models.glob("model_epoch_*.pt"))
    assert saved and saved[-1].name != "model_epoch_0023.pt", "the kill came after the run ended"
    resumed = torchrun(["-m", "aitimestepper", "train", *flags, "--output-dir", "killed", "--resume", str(saved[-1])],
                       runs)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load(runs / "whole/run/model/model_epoch_0023.pt"), load(models / "model_epoch_0023.pt")
    for name, weight in a["model_state_dict"].items():
        assert torch.equal(b["model_state_dict"][name], weight), name
    for name in ("pos", "vel", "energy"):
        assert torch.equal(b["training_state"][name], a["training_state"][name]), name
    assert metrics(runs / "killed/run") == metrics(runs / "whole/run")


def test_one_failing_rank_ends_every_rank_with_its_message(runs):
    started = time.monotonic()
    done = torchrun([str(HERE / "distributed/failing_rank.py"), "1", "4", "train", *TRAIN, "--epochs", "50",
                     "--output-dir", "failing"], runs)
    assert done.returncode != 0
    assert time.monotonic() - started < 60
    # Rank 1 raised (its traceback); rank 0 was waiting in a collective and ends with its words.
    assert "error: rank 1: RuntimeError: injected failure on rank 1" in done.stderr, done.stderr[-3000:]


def test_a_user_error_is_the_same_on_every_rank(runs):
    done = torchrun(["-m", "aitimestepper", "train", *TRAIN, "--num-orbits", "3", "--output-dir", "odd"], runs)
    assert done.returncode != 0
    assert done.stderr.count("error: --num-orbits 3 cannot be split evenly over 2 ranks") == 2, done.stderr[-3000:]
    assert not (runs / "odd").exists()


def test_resume_on_another_number_of_ranks_is_refused(runs):
    done = torchrun(["-m", "aitimestepper", "train", *TRAIN, "--output-dir", "one", "--epochs", "6",
                     "--resume", str(runs / "one/run/model/model_epoch_0003.pt")], runs)
    assert done.returncode != 0
    assert "written by a run on 1 rank(s) and this run has 2" in done.stderr, done.stderr[-3000:]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="nccl needs a CUDA GPU (runs on a GPU machine)")


@needs_cuda
def test_cuda_one_rank_on_nccl_computes_what_one_process_computes(tmp_path, capsys):
    """The nccl path (`--device cuda` is cuda:LOCAL_RANK), with the one rank a GPU machine has."""
    flags = ["train", *TRAIN, "--device", "cuda"]
    assert cli_main([*flags, "--output-dir", str(tmp_path / "one")]) == 0
    done = torchrun(["-m", "aitimestepper", *flags, "--output-dir", str(tmp_path / "nccl")], tmp_path, ranks=1)
    assert done.returncode == 0, done.stderr[-3000:]
    one, nccl = load(tmp_path / "one/run/model/model_epoch_0003.pt"), load(tmp_path / "nccl/run/model/model_epoch_0003.pt")
    for name, weight in one["model_state_dict"].items():
        assert_close(nccl["model_state_dict"][name], weight, name)
    capsys.readouterr()
    simulate = ["simulate", "--model-path", str(tmp_path / "one/run"), "--integrator-mode", "history", "--device", "cuda",
                "--num-orbits", "64", "--Nperiod", "1", "--e-max", "0.8", "--seed", "7"]
    assert cli_main(simulate) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = torchrun(["-m", "aitimestepper", *simulate], tmp_path, ranks=1)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [{k: v for k, v in r.items() if k != "wall_time_s"} for r in printed] == \
        [{k: v for k, v in r.items() if k != "wall_time_s"} for r in alone]


# ----------------------------------------------------------------------------------------------
# The pieces, in one process


def test_blocks_cover_every_item_once_in_order():
    for count in range(1, 12):
        for size in range(1, 5):
            blocks = [distributed.block(count, rank, size) for rank in range(size)]
            assert [i for b in blocks for i in range(count)[b]] == list(range(count))
            assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1


def test_one_process_runs_without_a_process_group(monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert cli_main(["simulate", "--integrator-mode", "analytic", "--steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert not torch.distributed.is_initialized()
    assert distributed.join() is distributed.SINGLE


def _samples(values: list[float]) -> Samples:
    """Samples whose every entry is its value (N = 2, D = 2, 3 inputs)."""
    v = torch.tensor(values, dtype=torch.float64)
    return Samples(v[:, None].repeat(1, 3), v, v[:, None, None].repeat(1, 2, 2), v[:, None, None].repeat(1, 2, 2),
                   v[:, None].repeat(1, 2), v, v)


def test_sharded_replay_buffers_hold_and_merge_the_one_process_trajectory():
    # Orbits 0..3 on two ranks (0-1, 2-3); a sample's value is its position in the trajectory.
    ledger = [[0, 1, 2, 3], [1, 3], [0, 2, 3]]
    whole = ReplayBuffer(3, 2, 2, torch.float64, "cpu", capacity=2)
    ranks = [ReplayBuffer(3, 2, 2, torch.float64, "cpu", capacity=2, mine=range(0, 2)),
             ReplayBuffer(3, 2, 2, torch.float64, "cpu", capacity=2, mine=range(2, 4))]
    position = 0
    for orbits in ledger:
        values = list(range(position, position + len(orbits)))
        whole.append(_samples(values), orbits)
        for buffer in ranks:
            buffer.append(_samples([v for v, b in zip(values, orbits) if buffer.holds(b)]), orbits)
        position += len(orbits)
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 9
    index = torch.tensor([8, 0, 5, 3, 1])
    held = [buffer.take(index).energy.tolist() for buffer in ranks]
    assert held == [[0.0, 1.0], [8.0, 5.0, 3.0]]  # each rank's share, in the minibatch's order
    merged = merge_states([b.state_dict() for b in ranks], [range(0, 2), range(2, 4)], ranks[0].ledger)
    for key, value in whole.state_dict().items():
        assert torch.equal(merged[key], value), key
    restored = ReplayBuffer(3, 2, 2, torch.float64, "cpu", mine=range(2, 4))
    restored.load_state_dict(merged, ranks[0].ledger)
    assert restored.take(torch.arange(9)).energy.tolist() == [2.0, 3.0, 5.0, 7.0, 8.0]


def test_evaluate_under_torchrun_says_it_runs_in_one_process(monkeypatch, capsys):
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    assert cli_main(["evaluate", "--model-path", "nowhere"]) == 2
    assert "evaluate runs in one process" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
