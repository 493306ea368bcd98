"""The builder rejects a command entrypoint the image would not contain, before any slow step."""

from __future__ import annotations

import pytest

from mvm import ConfigError, ImageSpec
from mvm.backends.image.builder import check_spec


@pytest.mark.parametrize(
    "command",
    [
        ("/bin/sh", "-c", "true"),
        ("httpd", "-f"),
        ("/usr/sbin/httpd",),
        ("/opt/app/run.sh",),
        ("/usr/bin/env",),
    ],
)
async def test_programs_the_image_contains_pass(command: tuple[str, ...]) -> None:
    spec = ImageSpec(
        name="ok",
        command=command,
        extra_files={"/opt/app/run.sh": "#!/bin/sh\necho hi\n"},
        packages=("/usr/bin/env",),
    )
    await check_spec(spec)


@pytest.mark.parametrize(
    "program", ["/usr/bin/does-not-exist", "no-such-tool", "/bin/init", "/usr/bin/python3"]
)
async def test_missing_entrypoint_is_a_coded_error(program: str) -> None:
    spec = ImageSpec(name="bad", command=(program,))
    with pytest.raises(ConfigError) as info:
        await check_spec(spec)
    assert info.value.code == "E_SPEC_ENTRYPOINT"
    assert program in info.value.message
