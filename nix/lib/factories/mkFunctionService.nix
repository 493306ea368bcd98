# mkFunctionService (seed: workload-ir-to-image, Layer 4): the language-aware
# layer. Function fields in, three artifacts out:
#   extraFiles      /etc/mvm/entrypoint (-> the runner), /usr/lib/mvm/wrappers/runner,
#                   /etc/mvm/wrapper.json {module, function, format, working_dir, mode},
#                   /etc/mvm/runtime.json {language, module, function, format,
#                   source_path, concurrency?}
#   servicePackages the interpreter (the language registry's servicePackages)
#   service         services.<workloadId>: how mkGuest runs it (the runner's boot mode)
# A concurrency block (ADR-0011) goes verbatim into runtime.json and selects the
# language's longrunning wrapper instead of oneshot.
{ pkgs }:
let
  u = import ../util.nix;
  registry = import ./languages { inherit pkgs; };
  runner = "/usr/lib/mvm/wrappers/runner";
  fn = "mkFunctionService";
in
{ language, module, function, format ? "json", working_dir ? "/app", concurrency ? null
, workloadId ? "function", appPkg ? null, dev ? false, ... }:
let
  lang = registry.${language} or (u.fail "E_IR_LANGUAGE" fn
    "language \"${language}\" has no entry in the language registry");
  variant = if concurrency == null then "oneshot" else "longrunning";
  wrapperJson = { inherit module function format working_dir; mode = if dev then "dev" else "prod"; };
  runtimeJson = { inherit language module function format; source_path = working_dir; }
    // (if concurrency == null then { } else { inherit concurrency; });
  json = v: builtins.toJSON v + "\n";
  checked =
    if format != "json" then u.fail "E_IR_FORMAT" fn
      "format \"${format}\": the ${language} wrapper has no msgpack implementation in the image (use json)"
    else lang;
in
{
  language = checked.language;
  inherit variant runner;
  servicePackages = checked.servicePackages;
  extraFiles = {
    "/etc/mvm/entrypoint" = "#!/bin/sh\nexec /bin/sh ${runner} \"$@\"\n";
    ${runner} = checked.runnerScript variant;
    "/etc/mvm/wrapper.json" = json wrapperJson;
    "/etc/mvm/runtime.json" = json runtimeJson;
  };
  # mkGuest writes /etc/mvm/entrypoint from `command`: the same pointer to the runner.
  command = [ "/bin/sh" runner ];
  service = { ${workloadId} = { command = "exec /bin/sh ${runner}"; restart = "always"; }; };
}
