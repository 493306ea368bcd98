"""The builder VM's image and its build command: Nix inside a microVM, from Debian's packages.

``image`` assembles and caches the builder image (fingerprint, digests, provenance, the
seed's reason codes); ``nix_job`` is the ``nix build`` line and the phase a failure is
blamed on; ``layout`` the paths image and driver agree on; ``debian`` the package
closure. Booting the VM and running a build in it is ``mvm.engine.builder_session``
(it needs the engine; this package stays below it).
"""

from mvm.engine.builders.builder_vm.image import (
    CacheState,
    cache_root,
    ensure_builder_image,
    inspect,
)

__all__ = ["CacheState", "cache_root", "ensure_builder_image", "inspect"]
