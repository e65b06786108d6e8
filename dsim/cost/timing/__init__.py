"""Time model (being split into modules; see ops.py)."""

from dsim.cost.timing.ops import *  # noqa: F401,F403
from dsim.cost.timing.ops import DATA_DIR, FIT_STAGES, OPS, _CAL_CACHE  # noqa: F401
