"""Diagnostic run once on the H200 (second call, 2026-11-26 ~11:00 UTC; output in diag_n8.log),
from the repository root as bench/diag_n8.py: the self-test's N=8 float32 backward miss. Are CUDA
and Triton (both hardware rsqrt) equally far from float64 on the same systems, i.e. conditioning,
or is the CUDA small kernel alone off?"""
import sys
import torch
sys.path.insert(0, "bench")
import cuda_selftest as st
from aitimestepper.ops import triton as tt
from aitimestepper.physics import integrator_index

F64 = torch.float64
for seed in (248, 249, 250, 251, 252, 253):
    N, B, D, steps, integ = 8, 300, 2, 7, "leapfrog"
    pos64, vel64, mass64 = st.make_system(B, N, D, seed)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    dt64 = (2e-3 * (0.5 + torch.rand(B, generator=gen, dtype=F64))).to(st.DEV)
    gg = torch.Generator(device="cpu").manual_seed(seed + 2)
    gp64 = torch.randn(B, N, D, generator=gg, dtype=F64).to(st.DEV)
    gv64 = torch.randn(B, N, D, generator=gg, dtype=F64).to(st.DEV)
    f = lambda t: t.float()
    pos, vel, mass, dt, gp, gv = map(f, (pos64, vel64, mass64, dt64, gp64, gv64))
    phys = st.physics_tuple(1.0, 0.0, None, D)
    _, _, traj = st.k_step(pos, vel, mass, dt, steps, integ, phys)
    c_gp, c_gv, c_gdt = st.k_step_backward(traj, mass, dt, gp, gv, steps, integ, phys)
    S = steps
    ttraj = torch.empty(S + 1, 3, B, N, D, device=st.DEV)
    op, ov = torch.empty_like(pos), torch.empty_like(vel)
    tt.step(pos, vel, mass, dt, op, ov, ttraj, steps, integrator_index(integ), phys)
    t_gp, t_gv, t_gdt = torch.empty_like(pos), torch.empty_like(vel), torch.empty_like(dt)
    tt.step_backward(ttraj, mass, dt, gp, gv, t_gp, t_gv, t_gdt, steps, integrator_index(integ), phys)
    args = (steps, integ, 1.0, 0.0, None)
    o = st.ref_step_and_grads(pos.double(), vel.double(), mass.double(), dt.double(), *args, gp.double(), gv.double())
    r = st.ref_step_and_grads(pos, vel, mass, dt, *args, gp, gv)
    e = lambda x: st.rel_err(x, o[2])
    per = lambda x: ((x.double() - o[2]).norm(dim=(1, 2)) / o[2].norm(dim=(1, 2)))
    worst = int(per(c_gp).argmax())
    x = pos64[worst]
    dmin = (x[:, None] - x[None]).norm(dim=-1).add(torch.eye(N, device=st.DEV, dtype=F64) * 1e9).min().item()
    print(f"seed {seed}: gpos err cuda {e(c_gp):.2e} triton {e(t_gp):.2e} ref32 {e(r[2]):.2e}; "
          f"gdt cuda {st.rel_err(c_gdt, o[4]):.2e} triton {st.rel_err(t_gdt, o[4]):.2e} ref32 {st.rel_err(r[4], o[4]):.2e}; "
          f"worst system {worst}: cuda {per(c_gp)[worst]:.1e} triton {per(t_gp)[worst]:.1e} ref32 {per(r[2])[worst]:.1e}, "
          f"closest pair {dmin:.3f}")
