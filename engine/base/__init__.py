"""mvm.engine.base: the foundation every other package imports, importing nothing of ours.

errors (the MvmError hierarchy) and error_codes (every code with its class and hint),
settings (the one typed Settings value, the only reader of os.environ; Accel),
paths (the home and cache layout, private files), process (pid + start time identity),
runfiles, log (structlog bound to stdlib logging). A test keeps it free of imports from
the rest of mvm.
"""
