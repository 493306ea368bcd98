{
  description = "mvm: turn a flake into a bootable microVM image (vmlinux, rootfs.ext4, mvm-meta.json)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  # lib.<system>.{mkGuest,mkFunctionWorkload,mkFunctionService}: see ./lib/default.nix
  # and ./README.md. The guest /init and agent are the repository's own
  # (../backends/guest), shared with the offline builder, so reference this flake
  # as `git+file:///path/to/mvm?dir=nix` (or `github:<owner>/mvm?dir=nix`): a
  # `path:` reference to this folder alone would not contain them.
  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
    in
    {
      lib = forAll (system: import ./lib { pkgs = nixpkgs.legacyPackages.${system}; });

      # The built-in demo image (busybox httpd with a health check), the same
      # spec as mvm.backends.demo.DEMO_SPEC: `nix build git+file://$PWD?dir=nix#demo`.
      packages = forAll (system: rec {
        demo = self.lib.${system}.mkGuest (import ./demo.nix);
        default = demo;
      });
    };
}
