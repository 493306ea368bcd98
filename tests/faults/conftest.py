"""Fault tests share the integration fixtures (real kernel, real images, real QEMU)."""

from integration.conftest import demo_dev_image, demo_image, free_port

__all__ = ["demo_dev_image", "demo_image", "free_port"]
