{
  description = "mvm stub package set: evaluation only (override the nixpkgs input with it in tests)";
  outputs = { self }: {
    legacyPackages = builtins.listToAttrs (map (system: {
      name = system;
      value = import ./default.nix { inherit system; };
    }) [ "x86_64-linux" "aarch64-linux" ]);
  };
}
