"""Physics data shared by the ops and the product layer: the tidal field, the integrators and the
local dynamical time that steps are measured in."""
from .field import TidalField
from .integrators import INTEGRATORS, integrator_index, substep_weights
from .timescale import dynamical_time, eta_criterion

__all__ = ["TidalField", "INTEGRATORS", "integrator_index", "substep_weights", "dynamical_time", "eta_criterion"]
