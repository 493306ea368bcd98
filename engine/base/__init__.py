"""mvm.engine.base: the foundation every other package imports, importing nothing of ours.

errors (the MvmError hierarchy) and error_codes (every code with its class and hint),
settings (the one typed Settings value, the only reader of os.environ; Accel),
paths (the home and cache layout, private files), process (pid + start time identity),
runfiles, log (structlog bound to stdlib logging). A test (tests/unit/test_import_graph.py)
keeps it free of imports from the rest of mvm.

Unlike the other packages this one re-exports nothing: every module of mvm imports
``mvm.engine.base.errors``, and a re-exporting ``__init__`` would make each of those
imports pay for the logging setup, the process table helpers and the error registry.
Its modules are its interface: import ``mvm.engine.base.errors``, ``.paths``, ...
"""
