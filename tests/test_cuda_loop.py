"""The simulation loop's CUDA kernels (csrc/cuda/loop.cu) beyond the per-backend grids of
test_features.py and test_ops_bound.py: many systems, NaN states, the size limit of the features
kernel, the symmetric step rule against its PyTorch formula, a carried step captured in a CUDA
graph, and a simulation on CUDA that goes through all three kernels. Every test needs a GPU and
a CUDA build and skips without them (bench/gpu_check.sh runs them on the GPU machine)."""
from __future__ import annotations

import pytest
import torch

from aitimestepper import ops
from aitimestepper.config import TIMESCALES
from aitimestepper.features import Featurizer, Scales, _BoundReference, _BoundScaled
from aitimestepper.physics.timescale import step_time
from conftest import assert_matches_reference, make_system, require_backend


@pytest.fixture(autouse=True)
def _needs_cuda():
    require_backend("cuda")


def _state(N: int, D: int, B: int, dtype, seed: int):
    system = make_system(N, D, (B,), dtype=dtype, seed=seed).to(device="cuda")
    acc = ops.acceleration(system.pos, system.mass, softening=0.01)
    return system.pos, system.vel, system.mass, acc


@pytest.mark.parametrize("timescale", TIMESCALES)
def test_scaled_features_of_many_systems(dtype, timescale):
    """B = 20000 three-body systems (157 blocks, the last partial): every row against the
    float64 formula, and the step time."""
    state = _state(3, 3, 20000, dtype, seed=11)
    featurizer = Featurizer("scaled", 0, Scales(), softening=0.01)
    bound = featurizer.bind(*state, timescale)
    assert isinstance(bound, _BoundScaled)
    block, _ = bound(None)
    oracle = featurizer.scaled_block(*(t.double() for t in state))
    reference32 = featurizer.scaled_block(*state) if dtype == torch.float32 else None
    assert_matches_reference(block, oracle, reference32, what="scaled block, B = 20000")
    tau_oracle = step_time(state[0].double(), state[1].double(), state[3].double(), timescale)
    limit = 1e-13 if dtype == torch.float64 else 4 * torch.finfo(torch.float32).eps
    assert ((bound.tau.double() - tau_oracle).abs() / tau_oracle).max() <= limit


def test_scaled_features_propagate_nan_as_the_cpu_kernel_does():
    """A diverged system (one NaN coordinate) gives NaN in the same entries as on the CPU; the
    other systems are untouched."""
    pos, vel, mass, acc = _state(4, 3, 3, torch.float64, seed=12)
    pos[1, 2, 0] = float("nan")
    featurizer = Featurizer("scaled", 0, Scales())
    cuda = featurizer.bind(pos, vel, mass, acc, "encounter")
    cpu = featurizer.bind(*(t.cpu() for t in (pos, vel, mass, acc)), "encounter")
    (on_cuda, _), (on_cpu, _) = cuda(None), cpu(None)
    assert torch.equal(torch.isnan(on_cuda.cpu()), torch.isnan(on_cpu)) and torch.isnan(on_cuda[1]).any()
    assert torch.isnan(cuda.tau[1]) and torch.isfinite(cuda.tau[[0, 2]]).all()
    torch.testing.assert_close(on_cuda[[0, 2]].cpu(), on_cpu[[0, 2]], rtol=1e-14, atol=0)


def test_scaled_features_above_the_kernel_size_take_the_pytorch_formula():
    from aitimestepper import _core

    N = _core.CUDA_SCALED_FEATURES_MAX_N + 1
    state = _state(N, 2, 2, torch.float64, seed=13)
    featurizer = Featurizer("scaled", 0, Scales())
    bound = featurizer.bind(*state)
    assert isinstance(bound, _BoundReference)
    block, _ = bound(None)
    torch.testing.assert_close(block, featurizer.scaled_block(*state), rtol=0, atol=0)


def test_symmetric_rule_is_its_pytorch_formula_bitwise(dtype):
    """The rule's kernel against SymmetricSteps' PyTorch lines on the same device, over steps that
    hit both clamps and a NaN (which passes through, as in torch.clamp)."""
    from aitimestepper import simulate

    gen = torch.Generator().manual_seed(14)
    f = (torch.rand(5, 1000, generator=gen, dtype=torch.float64) * 3 + 0.01).to(dtype=dtype, device="cuda")
    f[2, 7] = float("nan")
    compiled, formula = simulate.SymmetricSteps(), simulate.SymmetricSteps()
    for row in f:
        h = compiled(row)
        inverse = row.reciprocal()
        if formula.rho is None:
            formula.rho, expected = inverse, row
        else:
            formula.rho = torch.clamp(torch.add(inverse, inverse - formula.rho), min=0.5 * inverse, max=2 * inverse)
            expected = formula.rho.reciprocal()
        torch.testing.assert_close(h, expected, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(compiled.rho, formula.rho, rtol=0, atol=0, equal_nan=True)


def test_symmetric_rule_calls_the_cuda_kernel(monkeypatch):
    from aitimestepper import _core, simulate

    calls = []
    real = _core.cuda_symmetric_step
    monkeypatch.setattr(_core, "cuda_symmetric_step", lambda *a: calls.append(1) or real(*a))
    rule = simulate.SymmetricSteps()
    rule(torch.ones(4, dtype=torch.float64, device="cuda"))
    rule(torch.full((4,), 2.0, dtype=torch.float64, device="cuda"))
    assert calls == [1]  # the first step is f itself


@pytest.mark.parametrize("N", [3, 40])
def test_carried_step_replayed_from_a_cuda_graph_continues_the_run(N):
    """The step with its energy captured once and replayed: the same states and energies as the
    eager calls (one-thread-per-system kernel at N = 3, per-substep launches at N = 40)."""
    pos, vel, mass, acc = _state(N, 3, 64, torch.float64, seed=15)
    dt = torch.full((64,), 1e-3, dtype=torch.float64, device="cuda")
    eager = [t.clone() for t in (pos, vel, acc)]
    advance_eager = ops.bind_carried_step(*eager, mass, softening=0.01, with_energy=True)
    advance = ops.bind_carried_step(pos, vel, acc, mass, softening=0.01, with_energy=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        advance(dt)  # warm-up before capture
    torch.cuda.current_stream().wait_stream(side)
    advance_eager(dt)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        advance(dt)
    for _ in range(3):
        graph.replay()
        advance_eager(dt)
        assert all(torch.equal(a, b) for a, b in zip((pos, vel, acc), eager))
        assert torch.equal(advance.energy, advance_eager.energy)


def test_a_learned_run_on_cuda_goes_through_the_loop_kernels(tmp_path, monkeypatch):
    """simulate --device cuda with a learned symmetric step: features, rule and carried step are
    the loop.cu kernels (each called), and the run completes without diverging."""
    from _product import tiny_config
    from aitimestepper import _core
    from aitimestepper.simulate import run_simulation
    from aitimestepper.training import run_training

    result = run_training(tiny_config(tmp_path, device="cuda", epochs=1), progress=False)
    calls: dict[str, int] = {}
    for name in ("cuda_scaled_features", "cuda_symmetric_step", "cuda_carried_step"):
        real = getattr(_core, name)

        def counted(*args, _name=name, _real=real):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args)

        monkeypatch.setattr(_core, name, counted)
    records = run_simulation(tiny_config(tmp_path, device="cuda").replace(
        integrator_mode="ml", model_path=result.checkpoint, Nperiod=0.2, num_orbits=2), stream=None)
    assert set(calls) == {"cuda_scaled_features", "cuda_symmetric_step", "cuda_carried_step"}
    assert len(records) == 2 and all(not r["diverged"] and r["steps"] > 0 for r in records)
