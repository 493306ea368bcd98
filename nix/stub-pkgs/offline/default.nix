# The package set a user's flake gets for `import nixpkgs { ... }` (and
# nixpkgs.legacyPackages.<system>, flake.nix) when nixpkgs cannot be fetched
# (engine/builders/offline.py evaluates with it; the builder VM builds with it:
# `--override-input nixpkgs path:<dir>`). THIS FILE DECIDES what is available:
#
# * without ./manifest.json (the repository's copy): nothing. Every package is a
#   placeholder that mkGuest refuses as one coded line (E_NIXPKGS_UNAVAILABLE,
#   nix/lib/args.nix looks at `mvmUnavailable`), and whose store path, once
#   interpolated ("${pkgs.curl}/bin/curl"), throws that same coded line instead
#   of a raw Nix error.
# * with ./manifest.json (engine/builders/offline_pkgs.write_offline_nixpkgs):
#   each name it maps is a real derivation made from this machine's Debian
#   packages (./debian.nix); every other name throws
#   `E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.<x> is not in the offline package set
#   (known: ...)`. The build support mkGuest needs to BUILD an image (runCommand,
#   runCommandCC, pkgsStatic, busybox, closureInfo) is ../host.nix's (copied next
#   to this file as ./host.nix by write_offline_nixpkgs), and
#   linuxPackages.kernel.dev/vmlinux is the manifest's "kernel" file.
{ system ? builtins.currentSystem, ... }:
let
  hint = "nixpkgs, which cannot be fetched here (no network for github:NixOS/nixpkgs)";
  haveManifest = builtins.pathExists ./manifest.json;
  manifest = builtins.fromJSON (builtins.readFile ./manifest.json);
  known = builtins.attrNames manifest.packages;
  knownText = builtins.concatStringsSep ", " known;
  refusal = name:
    if haveManifest then
      "E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.${name} is not in the offline package set (known: ${knownText})"
    else "E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.${name} needs ${hint}";
  unavailable = name:
    let refuse = throw (refusal name); in
    {
      type = "derivation";
      inherit name system;
      pname = name;
      outPath = refuse;
      drvPath = refuse;
      outputs = [ "out" ];
      out = unavailable name;
      bin = unavailable name;
      dev = unavailable name;
      lib = unavailable name;
      meta = { };
    } // (if haveManifest then { } else { mvmUnavailable = name; });
  # The names flakes commonly use (the seeds' and more); `with pkgs; [ ... ]`
  # needs each name to exist, or Nix reports an undefined variable.
  names = [
    "bash" "bashInteractive" "busybox" "cacert" "coreutils" "curl" "diffutils" "e2fsprogs"
    "file" "findutils" "gawk" "gcc" "git" "gnugrep" "gnumake" "gnused" "gnutar" "go" "gzip"
    "htop" "iproute2" "iputils" "jq" "less" "nano" "neovim" "netcat" "nginx" "nodejs"
    "nodejs_18" "nodejs_20" "nodejs_22" "openssh" "openssl" "postgresql" "postgresql_14"
    "postgresql_15" "postgresql_16" "procps" "python3" "python311" "python312" "python313"
    "redis" "ripgrep" "rustc" "cargo" "socat" "sqlite" "strace" "tcpdump" "tmux" "unzip"
    "util-linux" "vim" "wget" "which" "xz" "yq" "zip" "zsh" "deno" "bun" "uv" "gunicorn"
    "hello" "fd" "fzf" "tree" "rsync" "gnupg" "kubectl" "docker" "sqlite-interactive"
  ];
  placeholders = builtins.listToAttrs (map (n: { name = n; value = unavailable n; }) names);
  common = { inherit system; mvmOffline = true; python3Packages = { }; nodePackages = { }; };

  support = import (if builtins.pathExists ./host.nix then ./host.nix else ../host.nix) { inherit system; };
  debian = import ./debian.nix { inherit (support) runCommand; };
  packages = builtins.mapAttrs debian manifest.packages;
  kernelDev =
    if manifest ? kernel then
      support.runCommand "linux-dev" { kernel = manifest.kernel; } ''
        mkdir -p "$out"
        cp "$kernel" "$out/vmlinux"
      ''
    else unavailable "linuxPackages.kernel";
  kernel = kernelDev // { dev = kernelDev; };
in
if !haveManifest then placeholders // common
else
  support // placeholders // packages // common // {
    mvmOfflinePackages = known;
    pkgsStatic = support;           # the static busybox and the C compiler of the agent
    linuxPackages = { inherit kernel; };
  }
