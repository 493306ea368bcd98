"""The offline build path: kernel + guest agent + init + spec -> Image.

Each input is content-addressed and cached (kernel by source version + config
fragment, agent by source hash, image by spec + input hashes), so a second build
of the same spec is a cache hit that costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from mvm.backends.guest.build import agent_binary, init_script
from mvm.backends.image.builder import build_image, check_spec
from mvm.backends.kernel_build import ensure_kernel
from mvm.engine.base.log import get_logger
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec

log = get_logger("mvm.build")

ProgressFn = Callable[[str, float | None], None]


async def build_offline_image(spec: ImageSpec, progress: ProgressFn | None = None) -> Image:
    await check_spec(spec)
    kernel = await ensure_kernel(progress=progress)
    agent = await anyio.to_thread.run_sync(agent_binary)
    init = init_script()
    if progress:
        progress("image", None)
    artifacts = await build_image(spec, kernel=kernel, agent=agent, init=init)
    log.info("build.done", image=spec.name, key=artifacts.key, rootfs=str(artifacts.rootfs))
    return Image.load(artifacts.rootfs.parent)
