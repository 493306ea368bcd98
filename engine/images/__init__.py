"""mvm.engine.images: what an image is; building one is mvm.engine.builders'.

Exported here: the value types (``ImageSpec`` and its ``Service``, ``HealthCheck``,
``Uids``), a built ``Image`` on disk and image spec files (``load_spec``,
``spec_from_dict``). Two modules are imported by their own path on purpose, so that naming
an ``ImageSpec`` stays cheap: ``ir_image`` (Workload IR -> ImageSpec, which pulls in the
IR package) and ``invoke_schema`` (the function schemas baked into an image, which pulls in
``jsonschema``). The names here resolve on first use (PEP 562): ``specfile``'s cattrs
converter is not paid by whoever imports only ``imagespec`` (``mvmctl --help`` and ``ls``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvm.engine.base.lazy import lazy_exports

if TYPE_CHECKING:
    from mvm.engine.images.image import Image
    from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids
    from mvm.engine.images.specfile import load_spec, spec_from_dict

_LAZY = {
    "Image": "mvm.engine.images.image",
    "HealthCheck": "mvm.engine.images.imagespec",
    "ImageSpec": "mvm.engine.images.imagespec",
    "Service": "mvm.engine.images.imagespec",
    "Uids": "mvm.engine.images.imagespec",
    "load_spec": "mvm.engine.images.specfile",
    "spec_from_dict": "mvm.engine.images.specfile",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "HealthCheck",
    "Image",
    "ImageSpec",
    "Service",
    "Uids",
    "load_spec",
    "spec_from_dict",
]
