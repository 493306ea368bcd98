"""``mvmctl images`` / ``rmi`` / ``image prune``: the build cache's images.

The listing and removal live in engine/builders/image_cache.py; this module reads the
VM rows (so an image a stopped VM still boots from is "in use") and prints.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
from typing import Any

from mvm.engine.builders.image_cache import CachedImage, list_images, prunable, remove, select
from mvm.engine.store import StateStore

COLUMNS = ("NAME", "KEY", "SIZE", "SHARED", "CREATED", "IN USE BY")


async def _images() -> list[CachedImage]:
    async with StateStore.open() as store:
        vms = await store.list_vms()
    return list_images(vms)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def image_json(image: CachedImage) -> dict[str, Any]:
    return {
        "name": image.name,
        "key": image.key,
        "path": str(image.directory),
        "size_bytes": image.size_bytes,
        "shared_bytes": image.shared_bytes,
        "created_at": image.created_at,
        "used_by": list(image.used_by),
    }


def _cells(image: CachedImage) -> tuple[str, ...]:
    created = datetime.datetime.fromtimestamp(image.created_at, datetime.UTC)
    return (
        image.name,
        image.short_key,
        human_size(image.size_bytes),
        human_size(image.shared_bytes),
        created.strftime("%Y-%m-%d %H:%M:%S"),
        ",".join(image.used_by) or "-",
    )


def _print_table(images: list[CachedImage]) -> None:
    from rich.console import Console  # rich: only for a table
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for title in COLUMNS:
        table.add_column(
            title, no_wrap=True, justify="right" if title in ("SIZE", "SHARED") else "left"
        )
    for image in images:
        table.add_row(*_cells(image))
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, highlight=False).print(table)
    sys.stdout.write("\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n")


async def cmd_images(args: argparse.Namespace) -> int:
    images = await _images()
    if args.json:
        print(json.dumps([image_json(i) for i in images], indent=2))
    else:
        _print_table(images)
    return 0


async def cmd_rmi(args: argparse.Namespace) -> int:
    images = await _images()
    chosen: dict[str, CachedImage] = {}
    for ref in args.images:  # resolve every ref before removing anything
        for image in select(images, ref):
            chosen[str(image.directory)] = image
    freed = remove(list(chosen.values()), force=args.force)
    for image in chosen.values():
        print(f"removed {image.name} {image.short_key}")
    print(f"freed {human_size(freed)}")
    return 0


async def cmd_image_prune(args: argparse.Namespace) -> int:
    doomed = prunable(await _images(), all_images=args.all_images)
    freed = remove(doomed)
    if args.json:
        print(json.dumps({"removed": [image_json(i) for i in doomed], "freed_bytes": freed}))
        return 0
    for image in doomed:
        print(f"removed {image.name} {image.short_key} ({human_size(image.size_bytes)})")
    print(f"freed {human_size(freed)}")
    return 0
