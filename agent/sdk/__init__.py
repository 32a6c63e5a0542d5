"""The probe SDK: what a probe plugin imports, and all it imports from the agent.

``Probe`` (the base class of a probe type), its ``ProbeSettings``, the ``ProbeContext`` a run is
given, the ``ProbeResult`` it returns with its ``Reason``, the ``MetricSpec`` of what it may emit,
the assertion language, and the agent's one map from library exceptions to reasons
(``map_exception``), so that a failure reads the same in every probe type. Plugins write
``from agent.sdk import ...``; the modules behind this package are the agent's business.
"""

from agent.sdk import cron as _cron
from agent.sdk import failures as _failures
from agent.sdk import probe as _probe
from agent.sdk.cron import *  # noqa: F403 - re-exported: see __all__
from agent.sdk.failures import *  # noqa: F403 - re-exported: see __all__
from agent.sdk.probe import *  # noqa: F403 - re-exported: see __all__

__all__ = sorted({*_probe.__all__, *_failures.__all__, *_cron.__all__})
