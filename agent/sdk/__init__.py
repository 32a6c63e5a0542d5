"""The probe SDK: what a probe plugin imports, and all it imports from the agent.

``Probe`` (the base class of a probe type), its ``ProbeSettings``, the ``ProbeContext`` a run is
given, the ``ProbeResult`` it returns with its ``Reason``, the ``MetricSpec`` of what it may emit,
and the assertion language. Plugins write ``from agent.sdk import ...``; the modules behind this
package are the agent's business.
"""

from agent.sdk.probe import *  # noqa: F403 - the SDK's surface is the probe module's __all__
from agent.sdk.probe import __all__ as __all__
