"""mvm.engine.images: what an image is; building one is mvm.engine.builders'.

Exported here: the value types (``ImageSpec`` and its ``Service``, ``HealthCheck``,
``Uids``), a built ``Image`` on disk and image spec files (``load_spec``,
``spec_from_dict``). Two modules are imported by their own path on purpose, so that naming
an ``ImageSpec`` stays cheap: ``ir_image`` (Workload IR -> ImageSpec, which pulls in the
IR package) and ``invoke_schema`` (the function schemas baked into an image, which pulls in
``jsonschema``).
"""

from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids
from mvm.engine.images.specfile import load_spec, spec_from_dict

__all__ = [
    "HealthCheck",
    "Image",
    "ImageSpec",
    "Service",
    "Uids",
    "load_spec",
    "spec_from_dict",
]
