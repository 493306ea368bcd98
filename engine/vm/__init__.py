"""mvm.engine.vm: a VM's whole life (DESIGN §3): cold start, clone, adopt, detach, stop,
snapshot, and the reconciler that squares the state store with the process table."""
