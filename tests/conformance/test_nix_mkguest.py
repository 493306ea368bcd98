"""The seeds' mkGuest examples, verbatim, evaluated offline with the real Nix.

Each flake is written to a temporary directory and evaluated the way the offline
builder evaluates a user's flake (``mvm.engine.builders.offline.flake_info``):
its ``mvm`` input is this repository's library and its ``nixpkgs`` input the
offline package set (nix/stub-pkgs/offline), since this host cannot fetch
github:NixOS/nixpkgs. Fragments of a flake (``mkGuest { ... }`` snippets) are put
into the smallest flake that gives them the names they use (``mvm``, ``system``,
``pkgs``), and a snippet without ``name`` gets one from a ``mkGuest`` wrapper; the
snippet text itself is untouched except where a seed writes a literal ``...``.
Examples that name nixpkgs packages are refused with the one coded line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.seed_texts import BEGINNER_FLAKE, DEV_IMAGE_FLAKE, MY_APP_FLAKE, MY_APP_TOML
from mvm.backends import nix_meta
from mvm.engine.base.errors import ConfigError
from mvm.engine.builders import BuildJob
from mvm.engine.builders.offline import OfflineBuilder, flake_info, flake_to_spec
from mvm.engine.request.mvmtoml import load_mvm_toml

pytestmark = pytest.mark.skipif(not nix_meta.nix_available(), reason="needs nix-instantiate")

BUILDING = "building-microvm-images.txt"
DEV_IMAGE = "dev-image.txt"
BEGINNER = "nix-beginners-guide.txt"
NIXPKGS_LINE = "needs nixpkgs, which cannot be fetched here (no network for github:NixOS/nixpkgs)"
NEED_LINE = "need" + NIXPKGS_LINE.removeprefix("needs")  # several packages

# The smallest flake around a fragment: the names the seeds' fragments use.
SKELETON = """{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    mvm.url = "github:tinylabscom/mvm";
  };
  outputs = { self, nixpkgs, mvm, ... }:
    let
      system = "SYSTEM";
      pkgs = import nixpkgs { inherit system; };
      mkGuest = args: mvm.lib.${system}.mkGuest ({ name = "snippet"; } // args);
    in
    {
      packages.${system} = {
BODY
      };
    };
}
"""


def wrap(body: str, system: str = "x86_64-linux") -> str:
    return SKELETON.replace("SYSTEM", system).replace("BODY", body)


def write_flake(root: Path, text: str, toml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flake.nix").write_text(text)
    if toml is not None:
        (root / "mvm.toml").write_text(toml)
    return root


async def mvm_of(root: Path, attr: str = "default") -> dict[str, Any]:
    info = await flake_info(root, attr)
    mvm: dict[str, Any] = info["mvm"]
    return mvm


async def refused(root: Path, attr: str = "default") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        await flake_info(root, attr)
    return caught.value


def inference(mvm: dict[str, Any]) -> tuple[Any, ...]:
    return (
        mvm["entrypointKind"],
        mvm["accessible"],
        mvm["sealed"],
        {k: v for k, v in mvm["uids"].items() if k != "services"},  # per-service: own tests
        mvm["rootlessEntrypoint"],
        mvm["expectedBootMs"],
    )


# --------------------------------------------------------------- Building MicroVM Images


@pytest.mark.seed(BUILDING, "my-app flake.nix + mvm.toml: offline build")
async def test_my_app_flake_builds_offline_into_an_image_dir(
    tmp_path: Path, seed_outcome: Any
) -> None:
    root = write_flake(tmp_path / "my-app", MY_APP_FLAKE, MY_APP_TOML)
    toml = load_mvm_toml(root / "mvm.toml")
    assert (toml.flake, toml.profile, toml.vcpus, toml.memory_mib) == (".", "default", 1, 256)
    mvm = await mvm_of(root, toml.profile)
    assert inference(mvm) == (
        "services", False, True, {"agent": 990, "entrypoint": 1000}, True, 300,
    )  # fmt: skip
    assert (mvm["name"], mvm["agentBinary"], mvm["services"]) == ("my-app", "real", ["web"])

    spec = await flake_to_spec(root / toml.flake, toml.profile)
    assert spec.services["web"].command == ("/usr/local/bin/web",)
    out = tmp_path / "out"
    out.mkdir()
    lines: list[str] = []
    await OfflineBuilder().build(
        BuildJob(name="my-app", source=root, attr=toml.profile), out, lines.append
    )
    assert sorted(p.name for p in out.iterdir()) == ["mvm-meta.json", "rootfs.ext4", "vmlinux"]
    meta = json.loads((out / "mvm-meta.json").read_text())
    nix_meta_json = mvm["meta"]
    # the builder and the dm-verity record are the host's (added after the build)
    host_only = ("builder", "verity")
    assert {k: v for k, v in meta.items() if k not in host_only} == {
        k: v for k, v in nix_meta_json.items() if k not in host_only
    }
    assert meta["sealed"] and len(meta["verity"]["root_hash"]) == 64  # a sealed image
    assert (meta["builder"], meta["hypervisor"], meta["initrd_present"]) == (
        "offline", "auto", False,
    )  # fmt: skip
    seed_outcome.works("evaluates (services, sealed, uid 1000) and builds vmlinux + rootfs.ext4")


ENTRYPOINT_FORMS = """# Form 1 — interactive PTY shell (accessible image, dev-friendly)
entrypoint.shell = "/bin/bash";
# Form 2 — single sealed program (production default)
entrypoint.command = [ "/usr/local/bin/serve" "--port" "8080" ];
# Form 3 — supervised multi-service
entrypoint.services = {
web = { command = [ "/bin/web" ]; };
worker = { command = [ "/bin/worker" ]; restart = "always"; };
};
"""


@pytest.mark.seed(BUILDING, "entrypoint: the three forms")
async def test_the_three_entrypoint_forms(tmp_path: Path, seed_outcome: Any) -> None:
    shell, command, services = (
        line for line in ENTRYPOINT_FORMS.split("# Form ")[1:]
    )  # each form with its comment line
    body = "\n".join(
        f"f{i} = mkGuest {{\n# Form {form}}};" for i, form in enumerate((shell, command, services))
    )
    root = write_flake(tmp_path / "forms", wrap(body))
    kinds = [await mvm_of(root, f"f{i}") for i in range(3)]
    assert inference(kinds[0]) == (
        "shell",
        True,
        False,
        {"agent": 990, "entrypoint": 0},
        False,
        300,
    )
    assert inference(kinds[1])[:3] == ("command", False, True)
    assert inference(kinds[2])[:3] == ("services", False, True)
    assert kinds[2]["services"] == ["web", "worker"]
    seed_outcome.works("shell => accessible; command, services => sealed")


DEV_OVERRIDES = """# A shell entrypoint that's still sealed (no console attach allowed)
mkGuest { entrypoint.shell = "/bin/bash"; dev = false; ... }
# A command entrypoint that's accessible for debugging
mkGuest { entrypoint.command = [ "..." ]; dev = true; ... }
"""


@pytest.mark.seed(BUILDING, "dev = false / dev = true overrides")
async def test_dev_overrides(tmp_path: Path, seed_outcome: Any) -> None:
    calls = [line for line in DEV_OVERRIDES.splitlines() if line.startswith("mkGuest")]
    # The seed's trailing `...` stands for "the rest of the arguments": none here.
    body = "\n".join(f"o{i} = {c.replace('; ... }', '; }')};" for i, c in enumerate(calls))
    root = write_flake(tmp_path / "dev", wrap(body))
    sealed_shell, open_command = await mvm_of(root, "o0"), await mvm_of(root, "o1")
    assert inference(sealed_shell) == (
        "shell", False, True, {"agent": 990, "entrypoint": 1000}, True, 300,
    )  # fmt: skip
    assert inference(open_command) == (
        "command", True, False, {"agent": 990, "entrypoint": 0}, False, 300,
    )  # fmt: skip
    seed_outcome.works("dev overrides the inferred accessible/sealed either way")


UIDS_EXAMPLES = """# Rootless dev shell — forces non-root even in dev mode.
mkGuest {
entrypoint.shell = "/bin/bash";
uids = { entrypoint = 1000; };
}
# Rootful prod workload — explicit override, rarely the right call.
mkGuest {
entrypoint.command = [ "/usr/local/bin/serve" ];
uids = { entrypoint = 0; };
}
# Non-default agent uid (e.g. to avoid collisions with host-side ranges).
mkGuest {
entrypoint.command = [ "/bin/x" ];
uids = { agent = 5000; };
}
"""


@pytest.mark.seed(BUILDING, "uids: the three examples")
async def test_the_three_uids_examples(tmp_path: Path, seed_outcome: Any) -> None:
    parts = ["mkGuest {" + p for p in UIDS_EXAMPLES.split("mkGuest {")[1:]]
    calls = [p.split("\n#")[0] for p in parts]
    body = "\n".join(f"u{i} = {c};" for i, c in enumerate(calls))
    root = write_flake(tmp_path / "uids", wrap(body))
    got = [await mvm_of(root, f"u{i}") for i in range(3)]
    assert inference(got[0]) == (
        "shell",
        True,
        False,
        {"agent": 990, "entrypoint": 1000},
        True,
        300,
    )
    assert inference(got[1]) == (
        "command", False, True, {"agent": 990, "entrypoint": 0}, False, 300,
    )  # fmt: skip
    assert inference(got[2]) == (
        "command", False, True, {"agent": 5000, "entrypoint": 1000}, True, 300,
    )  # fmt: skip
    seed_outcome.works("uids resolve as passthru.mvm.uids and rootlessEntrypoint")


async def test_a_snippet_without_name_is_refused_with_the_name_code(tmp_path: Path) -> None:
    """What the wrapper above supplies: mkGuest itself requires `name` (the seed's table)."""
    body = 'u = mvm.lib.${system}.mkGuest {\nentrypoint.shell = "/bin/bash";\n};'
    err = await refused(write_flake(tmp_path / "noname", wrap(body)), "u")
    assert (err.code, err.message) == ("E_SPEC_NAME", "mkGuest: name is required")


# --------------------------------------------------------------- Dev Image


DEV_TOML = """flake = "."
profile = "dev"
vcpus = 2
memory_mib = 1024
"""


@pytest.mark.seed(DEV_IMAGE, "flake: default output")
async def test_dev_image_flake_default_output(tmp_path: Path, seed_outcome: Any) -> None:
    mvm = await mvm_of(write_flake(tmp_path / "d", DEV_IMAGE_FLAKE, DEV_TOML), "default")
    assert inference(mvm) == (
        "command", False, True, {"agent": 990, "entrypoint": 1000}, True, 300,
    )  # fmt: skip
    seed_outcome.works("default: command entrypoint, sealed, uid 1000, expectedBootMs 300")


@pytest.mark.seed(DEV_IMAGE, "flake: dev output (packages with pkgs)")
async def test_dev_image_flake_dev_output(tmp_path: Path, seed_outcome: Any) -> None:
    root = write_flake(tmp_path / "d", DEV_IMAGE_FLAKE, DEV_TOML)
    profile = load_mvm_toml(root / "mvm.toml").profile
    err = await refused(root, profile)
    assert err.code == "E_NIXPKGS_UNAVAILABLE"
    assert err.message == f"mkGuest: pkgs.git, pkgs.jq, pkgs.ripgrep, pkgs.python3 {NEED_LINE}"
    assert "\n" not in err.one_line()
    seed_outcome.refused("E_NIXPKGS_UNAVAILABLE", "git, jq, ripgrep, python3 need nixpkgs")


DEV_SERVICES = """dev = mvm.lib.${system}.mkGuest {
name = "my-app-dev";
entrypoint.shell = "/bin/bash";
services.postgres = {
command = [ "${pkgs.postgresql}/bin/postgres" "-D" "/var/lib/postgresql/data" ];
restart = "always";
};
services.redis = {
command = [ "${pkgs.redis}/bin/redis-server" ];
};
packages = with pkgs; [ postgresql redis ];
};
"""


@pytest.mark.seed(DEV_IMAGE, "dev image with services.postgres / services.redis")
async def test_dev_image_with_services(tmp_path: Path, seed_outcome: Any) -> None:
    err = await refused(write_flake(tmp_path / "s", wrap(DEV_SERVICES)), "dev")
    assert (err.code, err.message) == (
        "E_NIXPKGS_UNAVAILABLE", f"mkGuest: pkgs.postgresql, pkgs.redis {NEED_LINE}",
    )  # fmt: skip
    seed_outcome.refused("E_NIXPKGS_UNAVAILABLE", "postgresql, redis need nixpkgs")


DEV_FORCED = """dev = mvm.lib.${system}.mkGuest {
name = "my-app-dev";
entrypoint.command = [ "/usr/local/bin/serve" "--debug" ];
dev = true; # explicit override; auto-infer is `false` for command form
};
"""


@pytest.mark.seed(DEV_IMAGE, "forcing the dev path on a sealed entrypoint")
async def test_dev_forced_on_a_command(tmp_path: Path, seed_outcome: Any) -> None:
    mvm = await mvm_of(write_flake(tmp_path / "f", wrap(DEV_FORCED)), "dev")
    assert inference(mvm) == ("command", True, False, {"agent": 990, "entrypoint": 0}, False, 300)
    seed_outcome.works("command entrypoint made accessible by dev = true")


# --------------------------------------------------------------- Nix for mvm: A Beginner's Guide


@pytest.mark.seed(BEGINNER, "the end-result flake (hello, python3 + curl)")
async def test_beginner_end_result_flake(tmp_path: Path, seed_outcome: Any) -> None:
    root = write_flake(tmp_path / "hello", BEGINNER_FLAKE)
    for attempt in (flake_info(root, "default"), flake_to_spec(root, "default")):
        with pytest.raises(ConfigError) as caught:
            await attempt
        assert caught.value.code == "E_NIXPKGS_UNAVAILABLE"
        assert caught.value.message == f"mkGuest: pkgs.python3, pkgs.curl {NEED_LINE}"
    seed_outcome.refused("E_NIXPKGS_UNAVAILABLE", "python3, curl need nixpkgs")


BEGINNER_NAME_ONLY = """packages.${system}.default = mvm.lib.${system}.mkGuest {
name = "hello";
};
"""


@pytest.mark.seed(BEGINNER, 'mkGuest { name = "hello"; } for aarch64-linux')
async def test_beginner_name_only(tmp_path: Path, seed_outcome: Any) -> None:
    flake = BEGINNER_FLAKE.split("packages.${system}.default")[0] + BEGINNER_NAME_ONLY + "};\n}\n"
    root = write_flake(tmp_path / "n", flake)
    mvm = await mvm_of(root)
    assert inference(mvm) == ("shell", True, False, {"agent": 990, "entrypoint": 0}, False, 300)
    with pytest.raises(ConfigError) as caught:
        await flake_to_spec(root, "default")
    assert caught.value.code == "E_FLAKE_SYSTEM"
    assert "aarch64-linux" in caught.value.message and "x86_64-linux" in caught.value.message
    seed_outcome.refused("E_FLAKE_SYSTEM", "evaluates; an aarch64-linux image is not built here")


BEGINNER_FRAGMENTS = {
    "packages = [ pkgs.python3 pkgs.curl ]": """mvm.lib.${system}.mkGuest {
name = "hello";
packages = [ pkgs.python3 pkgs.curl ];
}""",
    "services.hello with preStart": """mvm.lib.${system}.mkGuest {
name = "hello";
packages = [ pkgs.python3 pkgs.curl ];
services.hello = {
preStart = ''
mkdir -p /tmp/www
echo '<h1>Hello from mvm!</h1>' > /tmp/www/index.html
'';
command = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /tmp/www";
};
}""",
    "my-stack (redis + api)": """mvm.lib.${system}.mkGuest {
name = "my-stack";
packages = [ pkgs.python3 pkgs.redis pkgs.curl ];
services.redis = {
command = "${pkgs.redis}/bin/redis-server --port 6379";
};
services.api = {
command = "${pkgs.python3}/bin/python3 /app/server.py";
env = { REDIS_URL = "redis://localhost:6379"; };
};
healthChecks.api = {
healthCmd = "${pkgs.curl}/bin/curl -sf http://localhost:8080/health";
healthIntervalSecs = 10;
};
}""",
}


@pytest.mark.parametrize(
    "example", [pytest.param(k, marks=pytest.mark.seed(BEGINNER, k)) for k in BEGINNER_FRAGMENTS]
)
async def test_beginner_fragments(tmp_path: Path, example: str, seed_outcome: Any) -> None:
    text = BEGINNER_FRAGMENTS[example]
    err = await refused(write_flake(tmp_path / "f", wrap(f"default = {text};", "aarch64-linux")))
    assert err.code == "E_NIXPKGS_UNAVAILABLE"
    assert err.message.endswith(NEED_LINE) and err.message.startswith("mkGuest: pkgs.python3")
    seed_outcome.refused("E_NIXPKGS_UNAVAILABLE", err.message.split(": ", 1)[1].split(" need")[0])


BEGINNER_SERVICES = {
    "services.my-api (volumes)": """services.my-api = {
preStart = ''
# Data dir is read-write — create subdirs as needed
mkdir -p /mnt/data/logs
'';
command = "${pkgs.python3}/bin/python3 /app/server.py";
env = {
# Read config directly from the mounted volume
CONFIG_PATH = "/mnt/config/app.json";
LOG_DIR = "/mnt/data/logs";
};
};""",
    "services.my-api (env + preStart)": """services.my-api = {
preStart = ''
mkdir -p /tmp/data
echo "starting up..."
'';
command = "${pkgs.python3}/bin/python3 /app/server.py";
env = {
PORT = "8080";
LOG_LEVEL = "info";
};
};""",
    "services.api / app / www": """services.api = {
command = "${pkgs.python3}/bin/python3 -m gunicorn app:app -b 0.0.0.0:8080";
};
services.app = {
command = "${pkgs.nodejs}/bin/node /app/server.js";
env = { NODE_ENV = "production"; PORT = "3000"; };
};
services.www = {
preStart = ''
mkdir -p /tmp/www
echo '<h1>Hello!</h1>' > /tmp/www/index.html
'';
command = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /tmp/www";
};""",
}


@pytest.mark.parametrize(
    "example", [pytest.param(k, marks=pytest.mark.seed(BEGINNER, k)) for k in BEGINNER_SERVICES]
)
async def test_beginner_service_fragments(tmp_path: Path, example: str, seed_outcome: Any) -> None:
    body = f"default = mkGuest {{\n{BEGINNER_SERVICES[example]}\n}};"
    err = await refused(write_flake(tmp_path / "s", wrap(body, "aarch64-linux")))
    # The interpolated "${pkgs.python3}" itself is the refusal: one coded line.
    assert err.code == "E_NIXPKGS_UNAVAILABLE"
    assert err.message.startswith("nixpkgs: pkgs.") and err.message.endswith(NIXPKGS_LINE)
    seed_outcome.refused("E_NIXPKGS_UNAVAILABLE", err.message.split(": ", 1)[1].split(" needs")[0])


# --------------------------------------------------------------- Workload IR -> image

IR_PASSTHRU_OUTPUT = """{ "name": "hello", "accessible": false, "sealed": true, "entrypointKind": "command", "init_system": "busybox", "expected_boot_ms": 4200, "agent_binary": "/nix/store/...-mvm-guest-agent", "rootless_entrypoint": true, "vmlinux_present": true, "initrd_present": false}"""  # noqa: E501


@pytest.mark.seed("workload-ir-to-image.txt", "Inspecting build output: passthru.mvm fields")
async def test_passthru_mvm_has_the_ir_seeds_fields(tmp_path: Path, seed_outcome: Any) -> None:
    """The seed's `nix eval --json '.#default.passthru.mvm'` keys, on passthru.mvm and in
    mvm-meta.json (its values are the seed's example; ours: 300 ms, the real agent)."""
    seed_keys = set(json.loads(IR_PASSTHRU_OUTPUT))
    body = (
        'default = mvm.lib.${system}.mkGuest { name = "hello"; '
        'entrypoint.command = [ "/bin/true" ]; };'
    )
    mvm = await mvm_of(write_flake(tmp_path / "ir", wrap(body)))
    assert seed_keys <= set(mvm) and seed_keys <= set(mvm["meta"])
    assert {k: mvm[k] for k in seed_keys} == {k: mvm["meta"][k] for k in seed_keys} == {
        "name": "hello", "accessible": False, "sealed": True, "entrypointKind": "command",
        "init_system": "busybox", "expected_boot_ms": 300, "agent_binary": "real",
        "rootless_entrypoint": True, "vmlinux_present": True, "initrd_present": False,
    }  # fmt: skip
    seed_outcome.works("passthru.mvm and mvm-meta.json carry the seed's snake_case fields")
