"""Consumer services: effectively-once job state from the raw topic (docs/architecture.md).

The extension API: define a `Service` (name, event types, async handler) and run it with
`wazza-consumer package.module:name`.
"""

from .events import JobEvent
from .service import Service
from .store import Tx

__all__ = ["JobEvent", "Service", "Tx"]
