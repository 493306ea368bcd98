"""The built-in demo image: busybox httpd serving one page, with a health check.

It needs nothing beyond busybox, so it is what the README, the integration
tests and the boot benchmark run. ``DEMO_SPEC`` is sealed (no exec/console);
``DEMO_DEV_SPEC`` is the same workload as an accessible image for exec and
console tests.
"""

from __future__ import annotations

import attrs

from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service

INDEX_HTML = "<h1>Hello from mvm</h1>\n<p>Served by busybox httpd inside a microVM.</p>\n"

DEMO_SPEC = ImageSpec(
    name="demo",
    services={"web": Service(command="httpd -f -p 80 -h /srv/www", restart="always")},
    health_checks={
        "web": HealthCheck(
            health_cmd="wget -q -O /dev/null http://127.0.0.1/",
            health_interval_secs=2,
            health_timeout_secs=2,
        )
    },
    packages=("httpd", "wget"),
    extra_files={"/srv/www/index.html": INDEX_HTML},
    dev=False,
    vcpus=1,
    memory_mib=256,
)

DEMO_DEV_SPEC = attrs.evolve(DEMO_SPEC, name="demo-dev", dev=True)
