{
  # The offline package set as a flake: what `--override-input nixpkgs path:<dir>`
  # gets (the directory engine/builders/offline_pkgs.write_offline_nixpkgs writes).
  # `import nixpkgs { inherit system; }` imports ./default.nix, so both spellings work.
  description = "mvm offline package set (this machine's Debian packages as pkgs.<name>)";
  outputs = { self }: {
    legacyPackages = builtins.listToAttrs (map (system: {
      name = system;
      value = import ./default.nix { inherit system; };
    }) [ "x86_64-linux" "aarch64-linux" ]);
  };
}
