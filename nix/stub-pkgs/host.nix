# A package set made of this host's own tools (busybox-static, e2fsprogs, gcc or
# musl-gcc, bash), for tests that really BUILD an image with Nix without
# nixpkgs: impure (needs `sandbox = false`) and never for users, who build with
# nixpkgs. It proves the rootfs derivation's script, not nixpkgs' packages.
{ system ? builtins.currentSystem }:
let
  path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  runCommand = name: env: script: derivation ({
    inherit name system;
    builder = "/bin/bash";
    # The trailing `true` keeps bash from exec'ing the script's last command:
    # Nix 2.8 without a sandbox then reports the finished builder as killed.
    args = [ "-c" ("export PATH=${path}\n" + script + "\ntrue\n") ];
  } // builtins.removeAttrs env [ "passthru" "nativeBuildInputs" ]);
  runCommandCC = name: env: script: runCommand name env ''
    CC=$(command -v musl-gcc || command -v gcc)
    ${script}
  '';
  copyBinary = name: file: runCommand name { } ''
    mkdir -p "$out/bin"
    cp ${file} "$out/bin/"
  '';
  self = {
    inherit system runCommand runCommandCC;
    busybox = copyBinary "busybox" "/bin/busybox";
    e2fsprogs = null;
    pkgsStatic = self;
    closureInfo = { rootPaths }: runCommand "closure-info" { inherit rootPaths; } ''
      mkdir -p "$out"
      for p in $rootPaths; do echo "$p"; done > "$out/store-paths"
    '';
  };
in
self
