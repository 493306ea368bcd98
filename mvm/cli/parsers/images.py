"""The arguments of ``mvmctl images`` / ``rmi`` / ``image prune`` (mvm/cli/image_commands.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "images",
        help="list the built images of the cache",
        description="List the images in the build cache (<cache>/images and <cache>/builds): "
        "name, key, size, creation time and the VMs (running or stopped) that use each.",
    )
    p.add_argument("--json", action="store_true", help="a JSON list")
    p.set_defaults(handler="image_commands:cmd_images")

    p = sub.add_parser(
        "rmi",
        help="remove built images from the cache",
        description="Remove images by name or key prefix. An image a VM row still uses "
        "(running or stopped) is refused with E_IMAGE_IN_USE unless -f is given.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="an image name or key prefix")
    p.add_argument("-f", "--force", action="store_true", help="remove even an image in use")
    p.set_defaults(handler="image_commands:cmd_rmi")

    p = sub.add_parser("image", help="manage built images (prune)")
    image_sub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    prune = image_sub.add_parser(
        "prune",
        help="remove images no VM uses",
        description="Remove the images no VM row uses, keeping the newest image of each "
        "name (what the next build of it would hit); --all removes those too.",
    )
    prune.add_argument(
        "--all", dest="all_images", action="store_true", help="also remove the newest of each name"
    )
    prune.add_argument("--json", action="store_true", help="print what was removed as JSON")
    prune.set_defaults(handler="image_commands:cmd_image_prune")
