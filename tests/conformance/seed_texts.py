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
