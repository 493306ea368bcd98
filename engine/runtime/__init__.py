"""mvm.engine.runtime: the actor runtime (DESIGN §4). Knows nothing of VMs.

Actors with typed inboxes and request/reply (``Actor``, ``Reply``, ``ask``), supervisors
with restart policies (``Supervisor``, ``RestartPolicy``), the event bus every state change
is published on (``EventBus``, ``Event``) and the wire form of messages (``to_wire``,
``from_wire``, ``MessageRegistry``). Other packages use what is exported here.
"""

from mvm.engine.runtime.actor import Actor, Reply, ask
from mvm.engine.runtime.events import Event, EventBus
from mvm.engine.runtime.messages import MessageRegistry, from_wire, to_wire
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor

__all__ = [
    "Actor",
    "Event",
    "EventBus",
    "MessageRegistry",
    "Reply",
    "RestartPolicy",
    "Supervisor",
    "ask",
    "from_wire",
    "to_wire",
]
