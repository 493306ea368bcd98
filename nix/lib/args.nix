# mkGuest's arguments: their names, defaults and every check, as data. Pure
# builtins. `view` reads the arguments type-guarded, so each check in `checksFor`
# can be evaluated on its own and spec.nix reports all failures at once; the
# rules mirror engine/imagespec.py and backends/image_checks.py.
let
  u = import ./util.nix;
  inherit (u) matches repr;

  agentUid = 990;
  agentPath = "/usr/bin/mvm-agent";
  # passthru.mvm.agentBinary: "stub" | "real" (the seeds' field). Ours is the
  # real C agent built from backends/guest, never a placeholder script.
  agentBinary = "real";
  # The seeds' boot budget (<= 300 ms cold p50), surfaced as expectedBootMs.
  expectedBootMs = 300;
  # `hypervisor` is a preference the image records; "auto" (the default) means
  # the best one available at run time (DESIGN.md section 1).
  hypervisors = [ "auto" "firecracker" "cloud-hypervisor" "qemu" "stub" "libkrun" "apple-container" ];
  restarts = [ "always" "on-failure" "never" ];
  # The guest's syscall filters (backends/guest/agent/seccomp.c has the lists).
  seccompTiers = [ "unrestricted" "standard" "strict" ];
  defaultSeccomp = "standard";
  # Per-service uids are handed out from here, by sorted service name.
  firstServiceUid = 1001;
  baseDirs = [ "/proc" "/sys" "/dev" "/run" "/tmp" "/var" "/mnt" "/root" "/home" "/srv" ];
  reserved = [ "/init" "/bin/busybox" agentPath "/etc/passwd" "/etc/group" ];
  reservedTrees = [ "/etc/mvm" "/proc" "/sys" "/dev" ];
  # A function workload's two config files (mkFunctionService) live in /etc/mvm.
  functionFiles = [ "/etc/mvm/wrapper.json" "/etc/mvm/runtime.json" ];
  defaultShell = "/bin/sh";
  nixpkgsHint = "nixpkgs, which cannot be fetched here (no network for github:NixOS/nixpkgs)";

  # The seeds' arguments, plus the old spellings (`command`, `memoryMib`) and
  # the Nix-only `extraTrees` and `kernel`.
  guestArgs = [
    "name" "entrypoint" "services" "packages" "hypervisor" "vcpus" "memory_mib" "dev"
    "uids" "extraFiles" "healthChecks" "command" "memoryMib" "extraTrees" "kernel" "seccomp"
  ];
  entrypointArgs = [ "shell" "command" "services" ];
  serviceArgs = [ "command" "preStart" "env" "restart" "uid" ];
  healthArgs = [ "healthCmd" "healthIntervalSecs" "healthTimeoutSecs" ];
  uidArgs = [ "agent" "entrypoint" ];
  fileArgs = [ "content" "mode" ];

  isInt = builtins.isInt;
  isSet = builtins.isAttrs;
  setOr = x: if isSet x then x else { };
  startsWith = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  # A command: argv (non-empty list of strings) or a shell string.
  commandOk = c: (builtins.isString c && c != "") || (builtins.isList c && c != [ ] && builtins.all builtins.isString c);
  # entrypoint.command as argv: a string runs under /bin/sh -c (both builders agree).
  argv = c: if builtins.isString c then [ "/bin/sh" "-c" c ] else c;

  # The package set decides what is available: nix/stub-pkgs/offline marks every
  # package it cannot provide with `mvmUnavailable` (its outPath throws).
  unavailableOf = p: if isSet p && p ? mvmUnavailable then p.mvmUnavailable else null;

  # image_checks._check_guest_path
  guestPathChecks = code: path: [
    {
      ok = matches "/[A-Za-z0-9._+@%=,:~/ -]*" path
        && builtins.match ".*/" path == null && builtins.match ".*//.*" path == null;
      inherit code;
      msg = "path ${repr path} is not a plain absolute path (use letters, digits, '._+@%=,:~- ' and single '/')";
    }
    {
      ok = builtins.elem path functionFiles || !(builtins.elem path reserved || builtins.elem path baseDirs
        || builtins.any (t: path == t || startsWith (t + "/") path) reservedTrees);
      inherit code;
      msg = "path ${path} is reserved by the image builder";
    }
  ];

  keyCheck = code: what: allowed: attrs: {
    ok = isSet attrs && u.unknownKeys allowed attrs == [ ];
    inherit code;
    msg = if isSet attrs
      then "${what}: unknown argument(s) ${u.showList (u.unknownKeys allowed attrs)} (allowed: ${builtins.concatStringsSep ", " allowed})"
      else "${what} must be an attribute set";
  };

  normService = name: s: {
    command = s.command or null;
    preStart = s.preStart or null;
    env = s.env or { };
    restart = s.restart or "always";
    uid = s.uid or null;
  };

  normHealth = name: h: {
    healthCmd = h.healthCmd or null;
    healthIntervalSecs = h.healthIntervalSecs or 5;
    healthTimeoutSecs = h.healthTimeoutSecs or 3;
  };

  # extraFiles."/p" = "text" | { content; mode ? "0644"; } | a path or derivation.
  fileContent = f: if isSet f && !(u.isDerivation f) && f ? content then f.content else f;
  fileMode = f: if isSet f && !(u.isDerivation f) && f ? mode then u.parseMode f.mode else null;

  # What mkGuest reads from its arguments, each part defaulted and type-guarded
  # so every check below can be evaluated on its own (all are reported at once).
  view = args:
    let
      ep = setOr (args.entrypoint or { });
      epServices = setOr (ep.services or { });
      topServices = setOr (args.services or { });
      command = if ep ? command then ep.command else args.command or null;
      kind = if command != null then "command"
        else if ep ? shell then "shell"
        else if ep ? services || topServices != { } then "services"
        else "shell";
      devGiven = args.dev or null;
      accessible = if builtins.isBool devGiven then devGiven else kind == "shell";
      uids = setOr (args.uids or { });
      agent = uids.agent or agentUid;
      entrypoint = if (uids.entrypoint or null) != null then uids.entrypoint else if accessible then 0 else 1000;
    in
    {
      inherit ep epServices topServices command kind devGiven accessible uids agent entrypoint;
      services = epServices // topServices;
      healthChecks = setOr (args.healthChecks or { });
      extraFiles = setOr (args.extraFiles or { });
      extraTrees = setOr (args.extraTrees or { });
      packages = args.packages or [ ];
      vcpus = args.vcpus or 1;
      memoryMib = args.memory_mib or args.memoryMib or 256;
      hypervisor = args.hypervisor or "auto";
      seccomp = args.seccomp or defaultSeccomp;
    };

  # Every check (engine/imagespec.py and image_checks._validate_spec say the same).
  checksFor = fn: args:
    let
      v = view args;
      inherit (v) ep services healthChecks extraFiles extraTrees uids vcpus memoryMib packages hypervisor agent entrypoint seccomp;
      name = args.name or null;
      epKeys = builtins.filter (k: builtins.elem k entrypointArgs) (builtins.attrNames ep);
    in
    [ (keyCheck "E_SPEC_INVALID" fn guestArgs args) ]
    ++ map (k: {
      ok = !(args ? ${k}) || isSet args.${k};
      code = "E_SPEC_INVALID";
      msg = "${k} must be an attribute set";
    }) [ "entrypoint" "services" "healthChecks" "extraFiles" "extraTrees" "uids" ]
    ++ [
      { ok = name != null; code = "E_SPEC_NAME"; msg = "name is required"; }
      {
        ok = name == null || matches "[a-z0-9][a-z0-9-]{0,62}" name;
        code = "E_SPEC_NAME";
        msg = "image name ${if builtins.isString name then repr name else builtins.typeOf name} is invalid (use 1-63 lowercase letters, digits and '-')";
      }
      (keyCheck "E_SPEC_ENTRYPOINT" "entrypoint" entrypointArgs ep)
      {
        ok = !(args ? entrypoint) || builtins.length epKeys == 1;
        code = "E_SPEC_ENTRYPOINT";
        msg = "entrypoint must declare exactly one of shell, command, services (got ${if epKeys == [ ] then "none" else builtins.concatStringsSep ", " epKeys})";
      }
      {
        ok = !(ep ? command && args ? command);
        code = "E_SPEC_ENTRYPOINT";
        msg = "command is given twice (entrypoint.command and command): keep entrypoint.command";
      }
      {
        ok = !(ep ? shell) || (builtins.isString ep.shell && startsWith "/" ep.shell);
        code = "E_SPEC_ENTRYPOINT";
        msg = "entrypoint.shell must be an absolute path such as \"/bin/sh\"";
      }
      {
        ok = !(ep ? services) || isSet ep.services;
        code = "E_SPEC_ENTRYPOINT";
        msg = "entrypoint.services must be an attribute set of services";
      }
      {
        ok = v.command == null || commandOk v.command;
        code = "E_SPEC_COMMAND";
        msg = "command must be a non-empty list of strings (argv) or a non-empty string";
      }
      { ok = v.devGiven == null || builtins.isBool v.devGiven; code = "E_SPEC_INVALID"; msg = "dev must be a boolean"; }
      { ok = !(args ? memory_mib && args ? memoryMib); code = "E_SPEC_INVALID"; msg = "give memory_mib once (memoryMib is its old name)"; }
      {
        ok = isInt vcpus && vcpus >= 1 && vcpus <= 64;
        code = "E_SPEC_VCPUS";
        msg = "vcpus=${if isInt vcpus then toString vcpus else builtins.typeOf vcpus} out of range 1..64";
      }
      {
        ok = isInt memoryMib && memoryMib >= 64 && memoryMib <= 65536;
        code = "E_SPEC_MEMORY";
        msg = "memory_mib=${if isInt memoryMib then toString memoryMib else builtins.typeOf memoryMib} out of range 64..65536";
      }
    ]
    ++ map (n: {
      ok = !(v.topServices ? ${n});
      code = "E_SPEC_SERVICE";
      msg = "service ${repr n} is defined both in entrypoint.services and in services";
    }) (builtins.attrNames v.epServices)
    ++ map (svc: {
      ok = services ? ${svc};
      code = "E_SPEC_HEALTH";
      msg = "health check for unknown service ${repr svc} (define services.${svc} or remove the check)";
    }) (builtins.attrNames healthChecks)
    ++ map (path: {
      ok = startsWith "/" path && !(builtins.elem ".." (u.splitString "/" path));
      code = "E_SPEC_PATH";
      msg = "extra file path ${repr path} must be absolute without '..'";
    }) (builtins.attrNames extraFiles ++ builtins.attrNames extraTrees)
    ++ [
      (keyCheck "E_SPEC_UID" "uids" uidArgs uids)
      {
        ok = isInt agent && agent >= 0 && agent <= 65535;
        code = "E_SPEC_UID";
        msg = "agent uid ${toString agent} out of range 0..65535";
      }
      {
        ok = isInt entrypoint && entrypoint >= 0 && entrypoint <= 65535;
        code = "E_SPEC_UID";
        msg = "entrypoint uid ${toString entrypoint} out of range 0..65535";
      }
      {
        ok = entrypoint != agent;
        code = "E_SPEC_UID";
        msg = "entrypoint uid ${toString entrypoint} equals the agent uid (the workload must not run as the agent)";
      }
    ]
    ++ u.concatMap (n:
      let s0 = services.${n}; s = setOr s0; in
      [
        { ok = matches "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}" n; code = "E_SPEC_SERVICE"; msg = "service name ${repr n} is invalid"; }
        (keyCheck "E_SPEC_SERVICE" "services.${n}" serviceArgs s0)
        {
          ok = commandOk (s.command or null);
          code = "E_SPEC_SERVICE";
          msg = "service ${n}: command must be a non-empty list of strings (argv) or a non-empty string";
        }
        {
          ok = (s.preStart or null) == null || builtins.isString s.preStart;
          code = "E_SPEC_SERVICE";
          msg = "service ${n}: preStart must be a string or null";
        }
        {
          ok = builtins.elem (s.restart or "always") restarts;
          code = "E_SPEC_RESTART";
          msg = "service ${n}: restart must be one of always, on-failure, never (got ${if builtins.isString (s.restart or null) then repr s.restart else builtins.typeOf (s.restart or null)})";
        }
        { ok = isSet (s.env or { }); code = "E_SPEC_ENV"; msg = "service ${n}: env must be an attribute set"; }
        {
          ok = (s.uid or null) == null || (isInt s.uid && s.uid >= 0 && s.uid <= 65535);
          code = "E_SPEC_UID";
          msg = "service ${n}: uid ${if isInt (s.uid or null) then toString s.uid else builtins.typeOf (s.uid or null)} out of range 0..65535";
        }
        {
          ok = (s.uid or null) == null || s.uid != agent;
          code = "E_SPEC_UID";
          msg = "service ${n}: uid ${toString (s.uid or "")} equals the agent uid (the workload must not run as the agent)";
        }
      ]
      ++ map (k: {
        ok = matches "[A-Za-z_][A-Za-z0-9_]*" k && builtins.isString s.env.${k} && !(u.hasNewline s.env.${k});
        code = "E_SPEC_ENV";
        msg = "service ${n}: env ${repr k} must be a shell name with a one-line value";
      }) (builtins.attrNames (setOr (s.env or { })))
    ) (builtins.attrNames services)
    ++ u.concatMap (n:
      let h0 = healthChecks.${n}; h = setOr h0; in
      [
        (keyCheck "E_SPEC_HEALTH" "healthChecks.${n}" healthArgs h0)
        { ok = builtins.isString (h.healthCmd or null); code = "E_SPEC_HEALTH"; msg = "health check ${n}: healthCmd must be a string"; }
        {
          ok = isInt (h.healthIntervalSecs or 5) && isInt (h.healthTimeoutSecs or 3)
            && (h.healthIntervalSecs or 5) > 0 && (h.healthTimeoutSecs or 3) > 0;
          code = "E_SPEC_HEALTH";
          msg = "health check ${n}: interval and timeout must be positive";
        }
      ]) (builtins.attrNames healthChecks)
    ++ u.concatMap (guestPathChecks "E_SPEC_PATH") (builtins.filter builtins.isString (builtins.attrNames extraFiles ++ builtins.attrNames extraTrees))
    ++ [{ ok = builtins.isList packages; code = "E_SPEC_PACKAGE"; msg = "packages must be a list"; }]
    ++ map (p: {
      ok = u.isDerivation p || builtins.isPath p || matches "[A-Za-z0-9][A-Za-z0-9_.+-]*" p;
      code = "E_SPEC_PACKAGE";
      msg = "package ${if builtins.isString p then repr p else builtins.typeOf p} is neither a derivation nor a busybox applet name";
    }) (if builtins.isList packages then packages else [ ])
    ++ u.concatMap (p:
      let f = extraFiles.${p}; c = fileContent f; in
      [
        (if isSet f && !(u.isDerivation f) then keyCheck "E_SPEC_PATH" "extraFiles.${p}" fileArgs f else { ok = true; })
        {
          ok = builtins.isString c || builtins.isPath c || u.isDerivation c;
          code = "E_SPEC_PATH";
          msg = "extra file ${p}: content must be a string, a path or a derivation";
        }
        {
          ok = !(isSet f && !(u.isDerivation f) && f ? mode) || (let m = fileMode f; in m != null && m <= 511);
          code = "E_SPEC_MODE";
          msg = "extra file ${p}: mode must be octal permissions such as \"0644\" or \"0755\" (0..0777)";
        }
      ]) (builtins.attrNames extraFiles)
    ++ [{
      ok = builtins.elem seccomp seccompTiers;
      code = "E_SPEC_SECCOMP";
      msg = "unknown seccomp tier ${if builtins.isString seccomp then repr seccomp else builtins.typeOf seccomp} (one of ${builtins.concatStringsSep ", " seccompTiers})";
    }]
    ++ [{
      ok = builtins.elem hypervisor hypervisors;
      code = "E_SPEC_HYPERVISOR";
      msg = "unknown hypervisor ${if builtins.isString hypervisor then repr hypervisor else builtins.typeOf hypervisor} (one of ${builtins.concatStringsSep ", " hypervisors})";
    }];

  # Packages the package set cannot provide: ONE coded line naming all of them,
  # checked before anything else (the other checks would force their outPath).
  nixpkgsCheck = fn: args:
    let
      pkgs = args.packages or [ ];
      missing = builtins.filter (x: x != null) (map unavailableOf (if builtins.isList pkgs then pkgs else [ ]));
      names = builtins.concatStringsSep ", " (map (n: "pkgs.${n}") missing);
    in
    if missing == [ ] then null
    else u.fail "E_NIXPKGS_UNAVAILABLE" fn "${names} ${if builtins.length missing == 1 then "needs" else "need"} ${nixpkgsHint}";

in
{
  inherit agentUid agentPath agentBinary expectedBootMs hypervisors baseDirs defaultShell;
  inherit seccompTiers defaultSeccomp firstServiceUid;
  inherit view checksFor nixpkgsCheck argv normService normHealth fileContent fileMode;
}
