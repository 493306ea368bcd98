# The language registry's switchboard (seed: workload-ir-to-image, Layer 4). One
# file per language; adding one is: drop <lang>.nix here (servicePackages,
# language, runnerScript), list it below, add the name to engine/ir's languages.
{ pkgs }:
{
  python = import ./python.nix { inherit pkgs; };
  node = import ./node.nix { inherit pkgs; };
}
