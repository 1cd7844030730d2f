"""Two-phase training: Part 1 collects accepted steps along a trajectory,
retraining on any state whose step fails the energy gate; Part 2 replays the collected states in
batched minibatches. `run_training` (training/loop.py) runs the epochs, checkpoints and metrics.
"""
from .loop import TrainingResult, run_training

__all__ = ["run_training", "TrainingResult"]
