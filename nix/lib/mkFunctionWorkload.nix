# mkFunctionWorkload { irFile; appPkg; } (seed: workload-ir-to-image, Layer 3):
# read the Workload IR at evaluation time, validate the narrow shape this sugar
# supports (one app, a nix_packages image, exactly one primary function
# entrypoint), call mkFunctionService with the function's fields and compose its
# output with the IR's image packages and appPkg (at working_dir) into mkGuest.
# Anything richer: mkFunctionService + mkGuest by hand.
{ pkgs, mkGuest, mkFunctionService }:
let
  u = import ./util.nix;
  fn = "mkFunctionWorkload";
in
{ irFile, appPkg, dev ? false, ... }:
let
  ir = builtins.fromJSON (builtins.readFile irFile);
  apps = ir.apps or [ ];
  app = builtins.head apps;
  image = app.image or { };
  fns = builtins.filter (e: (e.kind or null) == "function" && (e.primary or false)) (app.entrypoints or [ ]);
  entry = builtins.head fns;
  working_dir = entry.working_dir or "/app";
  svc = mkFunctionService ({
    inherit (entry) language module function;
    format = entry.format or "json";
    inherit working_dir appPkg dev;
    workloadId = ir.id;
  } // (if entry ? concurrency && entry.concurrency != null then { inherit (entry) concurrency; } else { }));
  resources = app.resources or { };
  guest = mkGuest {
    name = app.name;
    inherit dev;
    inherit (svc) command;
    packages = svc.servicePackages ++ map (p: pkgs.${p}) (image.packages or [ ]);
    extraFiles = removeAttrs svc.extraFiles [ "/etc/mvm/entrypoint" ];
    extraTrees = { ${working_dir} = appPkg; };
    vcpus = resources.vcpus or 1;
    memoryMib = resources.memory_mb or 256;
  };
  checked =
    if !(builtins.isList apps) || builtins.length apps != 1 then
      u.fail "E_IR_APPS" fn "IR must have exactly one app"
    else if (image.kind or null) != "nix_packages" then
      u.fail "E_IR_IMAGE" fn "app.image.kind must be \"nix_packages\""
    else if builtins.length fns != 1 then
      u.fail "E_IR_ENTRYPOINT" fn "expected exactly one primary function entrypoint"
    else guest;
  # For the offline builder (engine/builders/offline_function.py): the inputs, so a
  # host without nixpkgs can build the same rootfs from the IR with its own python.
  offline = { irFile = toString irFile; appPkg = toString appPkg; inherit dev; };
in
checked // {
  passthru = checked.passthru // { mvmFunctionWorkload = offline; functionService = svc; };
  mvmFunctionWorkload = offline;
  functionService = svc;
}
