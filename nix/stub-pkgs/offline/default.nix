# The package set a user's flake gets for `import nixpkgs { ... }` (and
# nixpkgs.legacyPackages.<system>) when it is evaluated offline
# (engine/builders/offline.py): this host has no nixpkgs and no network for
# github:NixOS/nixpkgs. THIS FILE DECIDES what is available offline: today
# nothing, so every package is a placeholder that mkGuest refuses as one coded
# line (E_NIXPKGS_UNAVAILABLE, nix/lib/spec.nix looks at `mvmUnavailable`),
# and whose store path, once interpolated ("${pkgs.curl}/bin/curl"), throws
# that same coded line instead of a raw Nix error. An offline package set
# replaces entries here with real derivations.
{ system ? builtins.currentSystem, ... }:
let
  hint = "nixpkgs, which cannot be fetched here (no network for github:NixOS/nixpkgs)";
  unavailable = name:
    let refuse = throw "E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.${name} needs ${hint}"; in
    {
      type = "derivation";
      inherit name system;
      pname = name;
      mvmUnavailable = name;
      outPath = refuse;
      drvPath = refuse;
      outputs = [ "out" ];
      out = unavailable name;
      bin = unavailable name;
      dev = unavailable name;
      lib = unavailable name;
      meta = { };
    };
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
  packages = builtins.listToAttrs (map (n: { name = n; value = unavailable n; }) names);
in
packages // {
  inherit system;
  mvmOffline = true;
  python3Packages = { };
  nodePackages = { };
}
