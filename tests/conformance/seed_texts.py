"""Seed texts used by more than one conformance file, verbatim (one copy each)."""

MY_APP_TOML = """flake = "."
profile = "default"
vcpus = 1
memory_mib = 256
"""

MY_APP_FLAKE = """{
description = "my microVM app";
inputs = {
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
mvm.url = "github:tinylabscom/mvm";
};
outputs = { self, nixpkgs, mvm, ... }: {
packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
name = "my-app";
services.web = {
command = [ "/usr/local/bin/web" ];
};
};
};
}
"""

# The Dev Image seed's project flake (packages.<system>.{default,dev}).
DEV_IMAGE_FLAKE = """{
inputs = {
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
mvm.url = "github:tinylabscom/mvm";
};
outputs = { self, nixpkgs, mvm, ... }:
let
system = "x86_64-linux";
pkgs = import nixpkgs { inherit system; };
in
{
packages.${system} = {
# Production image — what `mvmctl up` builds.
default = mvm.lib.${system}.mkGuest {
name = "my-app";
entrypoint.command = [ "/usr/local/bin/serve" ];
};
# Dev image — what `mvmctl dev up` builds.
dev = mvm.lib.${system}.mkGuest {
name = "my-app-dev";
# entrypoint.shell auto-infers `dev = true` (accessible).
# `mvmctl console <vm>` attaches via vsock.
entrypoint.shell = "/bin/bash";
# Anything in nixpkgs.
packages = with pkgs; [
git
jq
ripgrep
python3
];
# Optional: per-tenant defaults; mvm.toml overrides at run time.
vcpus = 2;
memory_mib = 1024;
};
};
};
}
"""

# The beginner's guide's final flake, as the guide has it (system = "aarch64-linux").
BEGINNER_FLAKE = """{
inputs = {
mvm.url = "github:auser/mvm?dir=nix";
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
};
outputs = { mvm, nixpkgs, ... }:
let
system = "aarch64-linux";
pkgs = import nixpkgs { inherit system; };
in {
packages.${system}.default = mvm.lib.${system}.mkGuest {
name = "hello";
packages = [ pkgs.python3 pkgs.curl ];
services.hello = {
preStart = ''
mkdir -p /tmp/www
echo '<h1>Hello from mvm!</h1>' > /tmp/www/index.html
'';
command = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /tmp/www";
};
healthChecks.hello = {
healthCmd = "${pkgs.curl}/bin/curl -sf http://localhost:8080/";
healthIntervalSecs = 5;
};
};
};
}
"""

# ... and for this x86_64 host: the only change the seed's own callout asks for.
BEGINNER_FLAKE_X86 = BEGINNER_FLAKE.replace('system = "aarch64-linux"', 'system = "x86_64-linux"')
