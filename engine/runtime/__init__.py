"""mvm.engine.runtime: the actor runtime (actors with typed inboxes, supervisors with
restart policies, the event bus). Knows nothing of VMs."""
