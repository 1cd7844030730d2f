"""Feature vectors of a hand-computed two-body state, history padding and normalization, and the
compiled state block against its PyTorch reference."""
import math
import warnings

import pytest
import torch

from aitimestepper import features as features_module
from aitimestepper import ops
from aitimestepper.config import TIMESCALES
from aitimestepper.features import Featurizer, Scales, auto_scales
from conftest import assert_matches_reference, device_for, make_system, require_backend

# Masses 1 and 3 at x = -1 and x = +1: COM at x = 0.5, so r = (1.5, 0.5); velocities +3 and -1
# in y: VCOM = 0, s = (3, 1); |a_0| = G m_1 / d^2 = 3/4, |a_1| = 1/4; one pair, d = 2.
POS = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
VEL = torch.tensor([[[0.0, 3.0], [0.0, -1.0]]], dtype=torch.float64)
MASS = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
ACC = ops.acceleration(POS, MASS, backend="reference")
BASIC = [2, 2, 4, 1.0, 1.5, 2.0, 3.0, 0.5, 0.75, 2.0, 2.0]


def test_basic_features_by_hand():
    features = Featurizer("basic", 0, Scales()).state_block(POS, VEL, MASS, ACC)
    assert features.shape == (1, 11)
    torch.testing.assert_close(features[0], torch.tensor(BASIC, dtype=torch.float64))


def test_rich_features_by_hand():
    features = Featurizer("rich", 0, Scales(), softening=0.1).state_block(POS, VEL, MASS, ACC)[0]
    expected = [2, 2, 4, 2, 1, 3, math.sqrt(5), 1, 0.5, 1.5, math.sqrt(1.25), 2, 1, 3, math.sqrt(5),
                0.5, 0.25, 0.75, math.sqrt(5 / 16), 2, 2, 2, 0.1]
    torch.testing.assert_close(features, torch.tensor(expected, dtype=torch.float64))


def test_scales_divide_and_auto_scales_by_hand():
    scales = auto_scales(POS, VEL, MASS, ACC)
    assert scales.L0 == pytest.approx(2) and scales.V0 == pytest.approx(math.sqrt(5))
    assert scales.A0 == pytest.approx(math.sqrt(5 / 16)) and scales.T0 == pytest.approx(2 / math.sqrt(5))
    scaled = Featurizer("basic", 0, Scales(2.0, 4.0, 0.5, 1.0)).state_block(POS, VEL, MASS, ACC)[0]
    torch.testing.assert_close(scaled, torch.tensor([2, 2, 4, 0.5, 0.75, 0.5, 0.75, 1.0, 1.5, 1.0, 1.0],
                                                    dtype=torch.float64))


def test_padded_history_blocks_are_zero_and_fill_oldest_first():
    featurizer = Featurizer("basic", 2, Scales())
    history = featurizer.new_history(1, 2, 2, torch.float64, "cpu")
    inputs, block = featurizer.inputs(history, POS, VEL, MASS, ACC)
    assert inputs.shape == (1, 33) and torch.isfinite(inputs).all()
    assert (inputs[0, :22] == 0).all()
    torch.testing.assert_close(inputs[0, 22:], block[0])
    history.push(None, block, POS, VEL, ACC, torch.tensor([0.1], dtype=torch.float64))
    inputs, _ = featurizer.inputs(history, POS * 2, VEL, MASS, ACC)
    assert (inputs[0, :11] == 0).all()  # one slot still padding
    torch.testing.assert_close(inputs[0, 11:22], block[0])  # the pushed state, most recent slot
    assert not history.warm(0)
    history.push(None, block, POS, VEL, ACC, torch.tensor([0.1], dtype=torch.float64))
    assert history.warm(0)


def test_delta_mag_transitions_with_padding():
    featurizer = Featurizer("delta_mag", 2, Scales())
    history = featurizer.new_history(1, 2, 2, torch.float64, "cpu")
    inputs, _ = featurizer.inputs(history, POS, VEL, MASS, ACC)
    assert inputs.shape == (1, 20) and (inputs == 0).all()  # every transition touches padding
    history.push(None, None, POS, VEL, ACC, torch.tensor([0.25], dtype=torch.float64))
    moved = POS + torch.tensor([0.0, 0.5], dtype=torch.float64)  # every body moves 0.5 in y
    inputs, _ = featurizer.inputs(history, moved, VEL, MASS, ACC)
    assert (inputs[0, :10] == 0).all()
    # |dx| = 0.5 for both bodies: mean, max, rms 0.5; dv = da = 0; dt of the later state 0.25.
    torch.testing.assert_close(inputs[0, 10:], torch.tensor([0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0.25],
                                                            dtype=torch.float64))


def test_delta_mag_without_history_falls_back_to_basic():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        featurizer = Featurizer("delta_mag", 0, Scales())
    assert featurizer.feature_type == "basic" and featurizer.input_dim == 11
    assert any("basic" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------
# the compiled state block (csrc/cpu/features.cpp) against its reference, the PyTorch formula

requires_compiled_features = pytest.mark.skipif(
    not features_module._HAS_COMPILED_FEATURES, reason="the compiled module has no cpu_state_features (not built)")


@requires_compiled_features
@pytest.mark.parametrize("feature_type", ["basic", "rich"])
@pytest.mark.parametrize("N, D, batch", [(2, 2, ()), (3, 3, (4,)), (7, 2, (3,)), (127, 3, (2,))])
def test_compiled_state_block_matches_the_reference(feature_type, N, D, batch, dtype):
    system = make_system(N, D, batch or (1,), dtype=dtype, seed=N)
    acc = ops.acceleration(system.pos, system.mass, softening=0.01)
    featurizer = Featurizer(feature_type, 0, Scales(0.7, 1.3, 2.5, 0.4), softening=0.01)
    args = (system.pos, system.vel, system.mass, acc)
    compiled = featurizer.state_block(*args)
    assert features_module._compiled_applies(*args) and compiled.dtype == dtype
    oracle = featurizer.state_block_reference(*(t.double() for t in args))
    reference32 = featurizer.state_block_reference(*args) if dtype == torch.float32 else None
    assert_matches_reference(compiled, oracle, reference32, what=f"{feature_type} block")
    # Column by column too: a small column must not hide behind a large one in the norm.
    scale = oracle.abs().clamp_min(1e-300)
    limit = 1e-13 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps
    assert ((compiled.double() - oracle).abs() / scale).max() <= limit


@requires_compiled_features
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("timescale", TIMESCALES)
@pytest.mark.parametrize("N, D, batch", [(2, 2, ()), (3, 3, (4,)), (7, 2, (3,)), (32, 3, (2,)), (127, 3, (2,))])
def test_compiled_scaled_block_and_tau_match_the_reference(N, D, batch, dtype, timescale, backend):
    """csrc/cpu/features.cpp's (or csrc/cuda/loop.cu's) scaled block and step time against
    Featurizer.scaled_block and physics.timescale.step_time, with softening and G != 1 (the
    block's tau column is the dynamical time whatever the step's time scale). On CUDA up to
    CUDA_SCALED_FEATURES_MAX_N bodies (test_cuda_loop.py checks what happens above)."""
    from aitimestepper.features import _BoundScaled
    from aitimestepper.physics.timescale import bind_step_time, step_time

    require_backend(backend)
    if backend == "cuda" and N > features_module._core.CUDA_SCALED_FEATURES_MAX_N:
        pytest.skip("above the CUDA kernel's size: the PyTorch formula (test_cuda_loop.py)")
    system = make_system(N, D, batch or (1,), dtype=dtype, seed=N).to(device=device_for(backend))
    acc = ops.acceleration(system.pos, system.mass, softening=0.01, G=0.5)
    featurizer = Featurizer("scaled", 0, Scales(), softening=0.01, G=0.5)
    args = tuple(t.contiguous() for t in (system.pos, system.vel, system.mass, acc))
    bound = _BoundScaled(featurizer, *args, timescale)
    compiled, tau = bound.block(), bound.tau
    assert features_module.compiled_scaled_applies(*args) and compiled.dtype == tau.dtype == dtype
    oracle = featurizer.scaled_block(*(t.double() for t in args))
    reference32 = featurizer.scaled_block(*args) if dtype == torch.float32 else None
    assert_matches_reference(compiled, oracle, reference32, what="scaled block")
    limit = 1e-13 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps
    assert ((compiled.double() - oracle).abs() / oracle.abs().clamp_min(1e-300)).max() <= limit
    tau_oracle = step_time(args[0].double(), args[1].double(), args[3].double(), timescale)
    assert ((tau.double() - tau_oracle).abs() / tau_oracle).max() <= limit
    alone = bind_step_time(*args, G=0.5, softening=0.01, timescale=timescale)()
    assert torch.equal(alone, tau)


@requires_compiled_features
def test_compiled_state_block_propagates_nan_and_falls_back_for_gradients():
    featurizer = Featurizer("rich", 0, Scales())
    pos = POS.clone()
    pos[0, 1, 0] = float("nan")  # a diverged state: every block entry touched by it is NaN, as in torch
    compiled = featurizer.state_block(pos, VEL, MASS, ACC)
    reference = featurizer.state_block_reference(pos, VEL, MASS, ACC)
    assert torch.equal(torch.isnan(compiled), torch.isnan(reference)) and torch.isnan(compiled).any()
    # Inputs that want a gradient take the reference (which carries it); values are the same.
    wanting = POS.clone().requires_grad_()
    assert not features_module._compiled_applies(wanting, VEL, MASS, ACC)
    block = featurizer.state_block(wanting, VEL, MASS, ACC)
    block.sum().backward()
    assert wanting.grad is not None
    torch.testing.assert_close(block.detach(), featurizer.state_block(POS, VEL, MASS, ACC), rtol=1e-15, atol=0)


@requires_compiled_features
@pytest.mark.parametrize("feature_type, K", [("basic", 0), ("rich", 2), ("delta_mag", 2)])
def test_bound_inputs_follow_buffers_updated_in_place(feature_type, K):
    system = make_system(3, 2, (2,), seed=5)
    pos, vel = system.pos.clone(), system.vel.clone()
    acc = ops.acceleration(pos, system.mass)
    featurizer = Featurizer(feature_type, K, Scales(2.0, 0.5, 1.0, 4.0))
    history = featurizer.new_history(2, 3, 2, torch.float64, "cpu")
    bound = featurizer.bind(pos, vel, system.mass, acc)
    for _ in range(3):
        inputs, block = bound(history)
        expected, expected_block = featurizer.inputs(history, pos, vel, system.mass, acc)
        assert torch.equal(inputs, expected)
        history.push(None, block, pos, vel, acc, torch.full((2,), 0.1, dtype=torch.float64))
        pos.add_(0.01 * vel)  # the caller moves the state in place; the bound function sees it
        acc.copy_(ops.acceleration(pos, system.mass))


@pytest.mark.parametrize("timescale", TIMESCALES)
def test_the_pytorch_bound_scaled_features_compute_tau_once(monkeypatch, timescale):
    """Where the compiled kernel does not apply (GPU tensors), Featurizer.bind's function runs
    the PyTorch formula: the scaled block reuses its tau, with the values of Featurizer.inputs,
    and the step time is measured in the asked time scale."""
    from aitimestepper import physics
    from aitimestepper.features import _BoundReference

    monkeypatch.setattr(features_module, "_HAS_COMPILED_SCALED", False)
    system = make_system(3, 2, (2,), seed=6)
    acc = ops.acceleration(system.pos, system.mass)
    featurizer = Featurizer("scaled", 1, Scales(), softening=0.01)
    history = featurizer.new_history(2, 3, 2, torch.float64, "cpu")
    bound = featurizer.bind(system.pos, system.vel, system.mass, acc, timescale)
    assert isinstance(bound, _BoundReference)
    calls = []
    original = features_module.dynamical_time
    monkeypatch.setattr(features_module, "dynamical_time", lambda *a: calls.append(1) or original(*a))
    inputs, block = bound(history)
    assert len(calls) == 1
    expected, expected_block = featurizer.inputs(history, system.pos, system.vel, system.mass, acc)
    assert torch.equal(inputs, expected) and torch.equal(block, expected_block)
    assert torch.equal(bound.tau, physics.timescale.step_time(system.pos, system.vel, acc, timescale))
