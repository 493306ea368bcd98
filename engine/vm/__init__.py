"""mvm.engine.vm: a VM's whole life (DESIGN §3): cold start, clone, adopt, detach, stop,
snapshot, and the reconciler that squares the state store with the process table.

It sits above actors and backends and below the engine's root (``Engine`` in
``mvm.engine.engine``) and the CLI; tests/unit/test_import_graph.py keeps it so. This
``__init__`` re-exports nothing yet: the lifecycle modules (``runtime``, ``detached``,
``reconcile``, ``shim``) are being rewritten around named boot steps, and ``shim`` runs as
``python -m mvm.engine.shim``, so an eager ``__init__`` would import the whole
lifecycle into every process that names one of its small helpers.
"""
