"""mvm: a microVM manager with an embeddable structured-concurrency engine."""

from mvm.engine.errors import MvmError

__all__ = ["MvmError"]
__version__ = "0.1.0"
