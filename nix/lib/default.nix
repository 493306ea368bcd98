# The mvm Nix library as plain Nix: `import ./lib { pkgs = ...; }`. The flake
# (nix/flake.nix) wraps this per system; tests import it directly with the stub
# package set (nix/stub-pkgs), which evaluates everything but builds nothing.
#
#   mkGuest            { name, entrypoint? ({ shell | command | services }), services?,
#                        packages?, hypervisor?, vcpus?, memory_mib?, dev?, uids?,
#                        extraFiles?, healthChecks?, extraTrees?, kernel? }  (README.md)
#   mkFunctionWorkload { irFile, appPkg, dev? }  (the IR's one primary function -> a guest)
#   mkFunctionService  { language, module, function, format?, working_dir?, concurrency?,
#                        workloadId?, appPkg?, dev? } -> { extraFiles, servicePackages,
#                        service, command } (the per-language factory, ./factories)
#
# Each returns the image derivation (vmlinux, rootfs.ext4, mvm-meta.json) with
# `passthru.mvm` (also reachable as `.mvm`): accessible, sealed, entrypointKind,
# expectedBootMs, agentBinary, uids, rootlessEntrypoint, ... (and the snake_case
# init_system, expected_boot_ms, ...), and `meta`, the exact mvm-meta.json set.
{ pkgs
, guestSrc ? ../../backends/guest  # the shared /init and agent sources
}:
let
  u = import ./util.nix;
  spec = import ./spec.nix;
  rootfs = import ./rootfs.nix { inherit pkgs guestSrc; };

  build = fn: args: extraPassthru:
    let
      s = spec.normalize fn args;
      layout = spec.layout s;
      mvm = spec.passthruMvm s // extraPassthru;
      passthru = { inherit mvm layout; spec = s; };
      drv = rootfs.image s layout (args.kernel or null);
    in
    drv // passthru // { inherit passthru; };

  mkGuest = args:
    if !(builtins.isAttrs args) then u.fail "E_SPEC_INVALID" "mkGuest" "expects an attribute set"
    else build "mkGuest" args { };

  mkFunctionService = import ./factories/mkFunctionService.nix { inherit pkgs; };
  mkFunctionWorkload = import ./mkFunctionWorkload.nix { inherit pkgs mkGuest mkFunctionService; };
in
{
  inherit mkGuest;
  inherit mkFunctionWorkload mkFunctionService;
  # For tools and tests: the pure parts, without a derivation.
  inherit (spec) normalize metaJson passthruMvm layout agentUid agentBinary expectedBootMs hypervisors;
  inherit (rootfs) agent;
  version = "0.1";
}
