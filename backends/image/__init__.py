"""mvm.backends.image: the offline image assembler, for hosts without Nix.

An ext4 rootfs from an ``ImageSpec`` with this host's busybox, agent and kernel, laid out
exactly like the Nix path's output (``vmlinux``, ``rootfs.ext4``, ``mvm-meta.json``) so
the runtime cannot tell them apart: ``build_image`` (content-addressed, reproducible),
``check_spec`` (every problem of a spec before any slow step) and ``RECIPE_VERSION`` (part
of every cache key that depends on how images are assembled). Other packages use what is
exported here; ``builder`` is the orchestration, the steps live in modules of their own.
"""

from mvm.backends.image.assemble import GuestTree, assemble_rootfs
from mvm.backends.image.builder import ImageArtifacts, build_image, image_meta
from mvm.backends.image.checks import check_spec
from mvm.backends.image.key import RECIPE_VERSION

__all__ = [
    "RECIPE_VERSION",
    "GuestTree",
    "ImageArtifacts",
    "assemble_rootfs",
    "build_image",
    "check_spec",
    "image_meta",
]
