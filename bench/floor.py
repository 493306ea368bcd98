"""The boot floor: the same kernel booting a static ``/init`` that only says hello.

``bench boot`` compares the engine against two baselines measured in the same
interleaved run. The *bare* baseline boots our own rootfs (busybox /init and the
guest agent) from a hand-written QEMU command line, so it sees the host-side cost
of mvm but not the guest-side cost of /init and the agent. The *floor* boots a
rootfs whose whole userland is one static C program: it mounts devtmpfs, writes
the agent's hello frame to the virtio-serial port and sleeps. Nothing a guest can
do on top of this kernel and VMM is faster, so engine / floor is the real price
of everything mvm puts between the kernel and a ready agent.

The image is cached under ``$MVM_CACHE/bench-floor/<hash of the C source>``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from mvm import Image
from mvm.engine.base.paths import cache_dir

FLOOR_INIT_C = r"""
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

/* The hello frame the host waits for: a 4-byte big-endian length, then JSON. */
static const char body[] = "{\"t\":\"hello\",\"v\":1,\"floor\":true}";

/* The only virtio-serial port is the agent's; its number depends on the bus. */
static int open_port(void) {
    DIR *dir = opendir("/dev");
    struct dirent *e;
    char path[64];
    int fd = -1;
    while (dir && fd < 0 && (e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, "vport", 5) == 0) {
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            fd = open(path, O_WRONLY);
        }
    }
    if (dir) closedir(dir);
    return fd;
}

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = -1;
    for (int i = 0; i < 5000 && fd < 0; i++) {
        fd = open_port();
        if (fd < 0) usleep(1000);
    }
    if (fd >= 0) {
        uint32_t n = (uint32_t)(sizeof body - 1);
        unsigned char hdr[4] = {n >> 24, n >> 16, n >> 8, n};
        write(fd, hdr, 4);
        write(fd, body, sizeof body - 1);
    }
    for (;;) pause();
}
"""


def _compiler() -> str:
    for cc in ("musl-gcc", "gcc"):
        if path := shutil.which(cc):
            return path
    raise RuntimeError("bench floor needs musl-gcc or gcc (apt-get install musl-tools)")


def floor_rootfs() -> Path:
    """Build (once) and return the floor's ext4 rootfs."""
    key = hashlib.sha256(FLOOR_INIT_C.encode()).hexdigest()[:16]
    target = cache_dir() / "bench-floor" / key / "rootfs.ext4"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mvm-floor-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        (tree / "dev").mkdir(parents=True)
        (work / "init.c").write_text(FLOOR_INIT_C)
        subprocess.run(
            [_compiler(), "-static", "-Os", "-o", str(tree / "init"), str(work / "init.c")],
            check=True,
            capture_output=True,
        )
        staged = work / "rootfs.ext4"
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(staged), "8M"],
            check=True,
            capture_output=True,
        )
        staged.replace(target)
    return target


def floor_image(image: Image) -> Image:
    """``image``'s kernel with the floor rootfs (same kernel, nothing else of ours)."""
    return Image(
        directory=image.directory, kernel=image.kernel, rootfs=floor_rootfs(), meta=image.meta
    )
