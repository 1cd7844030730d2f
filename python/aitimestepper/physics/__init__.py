"""Physics data shared by the ops and the product layer: the tidal field and the integrators."""
from .field import TidalField
from .integrators import INTEGRATORS, integrator_index, substep_weights

__all__ = ["TidalField", "INTEGRATORS", "integrator_index", "substep_weights"]
