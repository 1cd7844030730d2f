"""Feature vectors of a hand-computed two-body state, history padding and normalization."""
import math
import warnings

import pytest
import torch

from aitimestepper import ops
from aitimestepper.features import Featurizer, Scales, auto_scales

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
