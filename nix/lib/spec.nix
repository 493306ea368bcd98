# mkGuest's arguments -> a checked, normalised spec, its metadata and the
# generated files of the guest tree. Pure builtins: this is the part tests
# evaluate against the stub package set, and it mirrors engine/imagespec.py and
# backends/ image_builder.py (`image_meta`), image_checks.py (`_validate_spec`)
# and image_tree.py (`_populate`) rule for rule, so both build paths boot the
# same guest and write the same mvm-meta.json.
let
  u = import ./util.nix;
  inherit (u) matches repr;

  agentUid = 990;
  agentBinary = "/usr/bin/mvm-agent";
  expectedBootMs = 700;
  hypervisors = [ "qemu" "firecracker" "cloud-hypervisor" "stub" ];
  restarts = [ "always" "on-failure" "never" ];
  baseDirs = [ "/proc" "/sys" "/dev" "/run" "/tmp" "/var" "/mnt" "/root" "/home" "/srv" ];
  reserved = [ "/init" "/bin/busybox" agentBinary "/etc/passwd" "/etc/group" ];
  reservedTrees = [ "/etc/mvm" "/proc" "/sys" "/dev" ];
  # A function workload's two config files (mkFunctionService) live in /etc/mvm.
  functionFiles = [ "/etc/mvm/wrapper.json" "/etc/mvm/runtime.json" ];

  guestArgs = [
    "name" "command" "services" "packages" "extraFiles" "extraTrees" "uids" "dev"
    "vcpus" "memoryMib" "healthChecks" "hypervisor" "kernel"
  ];
  serviceArgs = [ "command" "preStart" "env" "restart" ];
  healthArgs = [ "healthCmd" "healthIntervalSecs" "healthTimeoutSecs" ];
  uidArgs = [ "agent" "entrypoint" ];

  isInt = builtins.isInt;
  startsWith = p: s: builtins.substring 0 (builtins.stringLength p) s == p;

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
    ok = builtins.isAttrs attrs && u.unknownKeys allowed attrs == [ ];
    inherit code;
    msg = if builtins.isAttrs attrs
      then "${what}: unknown argument(s) ${u.showList (u.unknownKeys allowed attrs)} (allowed: ${builtins.concatStringsSep ", " allowed})"
      else "${what} must be an attribute set";
  };

  normService = name: s: {
    command = s.command or null;
    preStart = s.preStart or null;
    env = s.env or { };
    restart = s.restart or "always";
  };

  normHealth = name: h: {
    healthCmd = h.healthCmd or null;
    healthIntervalSecs = h.healthIntervalSecs or 5;
    healthTimeoutSecs = h.healthTimeoutSecs or 3;
  };

  # The checks in the offline builder's order: ImageSpec.__attrs_post_init__,
  # then image_checks._validate_spec.
  checksFor = fn: args:
    let
      name = args.name or null;
      command = args.command or null;
      services = args.services or { };
      healthChecks = args.healthChecks or { };
      extraFiles = args.extraFiles or { };
      extraTrees = args.extraTrees or { };
      uids = args.uids or { };
      vcpus = args.vcpus or 1;
      memoryMib = args.memoryMib or 256;
      dev = args.dev or false;
      packages = args.packages or [ ];
      hypervisor = args.hypervisor or "qemu";
      agent = uids.agent or agentUid;
      entrypoint = if (uids.entrypoint or null) != null then uids.entrypoint else if dev == true then 0 else 1000;
      sets = { inherit services healthChecks extraFiles extraTrees uids; };
    in
    [ (keyCheck "E_SPEC_INVALID" fn guestArgs args) ]
    ++ map (k: {
      ok = builtins.isAttrs sets.${k};
      code = "E_SPEC_INVALID";
      msg = "${k} must be an attribute set";
    }) (builtins.attrNames sets)
    ++ [
      { ok = name != null; code = "E_SPEC_NAME"; msg = "name is required"; }
      {
        ok = matches "[a-z0-9][a-z0-9-]{0,62}" name;
        code = "E_SPEC_NAME";
        msg = "image name ${repr name} is invalid (use 1-63 lowercase letters, digits and '-')";
      }
      {
        ok = command == null || (builtins.isList command && builtins.all builtins.isString command);
        code = "E_SPEC_COMMAND";
        msg = "command must be a list of strings (argv) or null";
      }
      { ok = command != [ ]; code = "E_SPEC_COMMAND"; msg = "command is empty (omit it or give argv)"; }
      { ok = builtins.isBool dev; code = "E_SPEC_INVALID"; msg = "dev must be a boolean"; }
      {
        ok = isInt vcpus && vcpus >= 1 && vcpus <= 64;
        code = "E_SPEC_VCPUS";
        msg = "vcpus=${toString vcpus} out of range 1..64";
      }
      {
        ok = isInt memoryMib && memoryMib >= 64 && memoryMib <= 65536;
        code = "E_SPEC_MEMORY";
        msg = "memory_mib=${toString memoryMib} out of range 64..65536";
      }
    ]
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
      let s = services.${n}; in
      [
        { ok = matches "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}" n; code = "E_SPEC_SERVICE"; msg = "service name ${repr n} is invalid"; }
        (keyCheck "E_SPEC_SERVICE" "services.${n}" serviceArgs s)
        { ok = builtins.isString (s.command or null); code = "E_SPEC_SERVICE"; msg = "service ${n}: command must be a string"; }
        {
          ok = (s.preStart or null) == null || builtins.isString s.preStart;
          code = "E_SPEC_SERVICE";
          msg = "service ${n}: preStart must be a string or null";
        }
        {
          ok = builtins.elem (s.restart or "always") restarts;
          code = "E_SPEC_RESTART";
          msg = "service ${n}: restart must be one of always, on-failure, never (got ${repr (s.restart or "")})";
        }
      ]
      ++ map (k: {
        ok = matches "[A-Za-z_][A-Za-z0-9_]*" k && builtins.isString s.env.${k} && !(u.hasNewline s.env.${k});
        code = "E_SPEC_ENV";
        msg = "service ${n}: env ${repr k} must be a shell name with a one-line value";
      }) (builtins.attrNames (s.env or { }))
    ) (builtins.attrNames services)
    ++ u.concatMap (n:
      let h = healthChecks.${n}; in
      [
        (keyCheck "E_SPEC_HEALTH" "healthChecks.${n}" healthArgs h)
        { ok = builtins.isString (h.healthCmd or null); code = "E_SPEC_HEALTH"; msg = "health check ${n}: healthCmd must be a string"; }
        {
          ok = isInt (h.healthIntervalSecs or 5) && isInt (h.healthTimeoutSecs or 3)
            && (h.healthIntervalSecs or 5) > 0 && (h.healthTimeoutSecs or 3) > 0;
          code = "E_SPEC_HEALTH";
          msg = "health check ${n}: interval and timeout must be positive";
        }
      ]) (builtins.attrNames healthChecks)
    ++ u.concatMap (guestPathChecks "E_SPEC_PATH") (builtins.attrNames extraFiles ++ builtins.attrNames extraTrees)
    ++ map (p: {
      ok = u.isDerivation p || builtins.isPath p || matches "[A-Za-z0-9][A-Za-z0-9_.+-]*" p;
      code = "E_SPEC_PACKAGE";
      msg = "package ${if builtins.isString p then repr p else builtins.typeOf p} is neither a derivation nor a busybox applet name";
    }) (if builtins.isList packages then packages else [ null ])
    ++ map (p: {
      ok = builtins.isString extraFiles.${p} || builtins.isPath extraFiles.${p} || u.isDerivation extraFiles.${p};
      code = "E_SPEC_PATH";
      msg = "extra file ${p}: content must be a string, a path or a derivation";
    }) (builtins.attrNames extraFiles)
    ++ [{
      ok = builtins.elem hypervisor hypervisors;
      code = "E_SPEC_HYPERVISOR";
      msg = "unknown hypervisor ${repr hypervisor} (one of ${builtins.concatStringsSep ", " hypervisors})";
    }];

  # The ImageSpec-shaped view (snake_case, cattrs' unstructured form): what the
  # offline builder hashes as spec_hash. Nix-only inputs join the hash under a
  # separate key only when used, so a spec the offline builder could also take
  # hashes the same on both paths.
  imageSpecView = spec: {
    inherit (spec) name dev vcpus;
    command = spec.command;
    services = builtins.mapAttrs (n: s: {
      inherit (s) command env restart;
      pre_start = s.preStart;
    }) spec.services;
    packages = map (p: if builtins.isString p then p else toString p) spec.packages;
    extra_files = builtins.mapAttrs (p: c: if builtins.isString c then c else toString c) spec.extraFiles;
    uids = { agent = spec.uids.agent; entrypoint = spec.uidsGiven.entrypoint; };
    memory_mib = spec.memoryMib;
    health_checks = builtins.mapAttrs (n: h: {
      health_cmd = h.healthCmd;
      health_interval_secs = h.healthIntervalSecs;
      health_timeout_secs = h.healthTimeoutSecs;
    }) spec.healthChecks;
  };

  specHash = spec:
    let
      view = imageSpecView spec;
      nixOnly = { }
        // (if spec.extraTrees != { } then { extra_trees = builtins.mapAttrs (p: t: toString t) spec.extraTrees; } else { })
        // (if spec.hypervisor != "qemu" then { inherit (spec) hypervisor; } else { });
    in
    builtins.hashString "sha256" (builtins.toJSON (if nixOnly == { } then view else view // { nix = nixOnly; }));

in
rec {
  inherit agentUid agentBinary expectedBootMs hypervisors;

  # mkGuest's arguments -> the normalised spec (throws a coded error on bad input).
  normalize = fn: args:
    u.checked fn (checksFor fn args) (
      let
        dev = args.dev or false;
        uidsGiven = { agent = (args.uids or { }).agent or agentUid; entrypoint = (args.uids or { }).entrypoint or null; };
        command = args.command or null;
        services = builtins.mapAttrs normService (args.services or { });
      in
      rec {
        inherit (args) name;
        inherit dev command services uidsGiven;
        packages = args.packages or [ ];
        extraFiles = args.extraFiles or { };
        extraTrees = args.extraTrees or { };
        healthChecks = builtins.mapAttrs normHealth (args.healthChecks or { });
        vcpus = args.vcpus or 1;
        memoryMib = args.memoryMib or 256;
        hypervisor = args.hypervisor or "qemu";
        # The inference rules (engine/imagespec.py says the same).
        entrypointKind = if command != null then "command" else if services != { } then "services" else "shell";
        accessible = dev;
        sealed = !dev;
        uids = {
          agent = uidsGiven.agent;
          entrypoint = if uidsGiven.entrypoint != null then uidsGiven.entrypoint else if dev then 0 else 1000;
        };
        rootlessEntrypoint = uids.entrypoint != 0;
      });

  # mvm-meta.json, key for key what image_builder.image_meta writes, plus the
  # Nix-only `builder` and `hypervisor`.
  metaJson = spec: {
    inherit (spec) name accessible sealed entrypointKind vcpus;
    init_system = "busybox";
    expected_boot_ms = expectedBootMs;
    agent_binary = agentBinary;
    rootless_entrypoint = spec.rootlessEntrypoint;
    uids = spec.uids;
    vmlinux_present = true;
    memory_mib = spec.memoryMib;
    services = builtins.attrNames spec.services;
    health_checks = builtins.attrNames spec.healthChecks;
    spec_hash = specHash spec;
    builder = "nix";
    hypervisor = spec.hypervisor;
  };

  # passthru.mvm: the same facts under mkGuest's camelCase names, plus the meta itself.
  passthruMvm = spec:
    let meta = metaJson spec; in {
      inherit (spec) name accessible sealed entrypointKind vcpus memoryMib uids rootlessEntrypoint hypervisor;
      initSystem = meta.init_system;
      expectedBootMs = meta.expected_boot_ms;
      agentBinary = meta.agent_binary;
      vmlinuxPresent = true;
      services = meta.services;
      healthChecks = meta.health_checks;
      specHash = meta.spec_hash;
      inherit meta;
    };

  # The files and directories the builder generates (image_tree._populate),
  # as { files.<guest path> = { text; mode; }; dirs = [ { path; mode; uid; } ]; }.
  # Busybox, its applet links, /init, the agent, packages and extra files are
  # added by the rootfs derivation itself.
  layout = spec:
    let
      uid = spec.uids.entrypoint;
      agent = spec.uids.agent;
      users = [ [ "root" 0 "/root" "/bin/sh" ] [ "mvm-agent" agent "/" "/bin/false" ] ]
        ++ (if uid != 0 then [ [ "app" uid "/home/app" "/bin/sh" ] ] else [ ])
        ++ (if !(builtins.elem 65534 [ uid agent ]) then [ [ "nobody" 65534 "/" "/bin/false" ] ] else [ ]);
      at = builtins.elemAt;
      line = f: u.concatStrings (map f users);
      env = {
        MVM_NAME = spec.name;
        MVM_ENTRYPOINT_KIND = spec.entrypointKind;
        MVM_ENTRYPOINT_UID = toString uid;
        MVM_AGENT_UID = toString agent;
        MVM_SEALED = if spec.sealed then "1" else "0";
        MVM_SERVICES = builtins.concatStringsSep " " (builtins.attrNames spec.services);
      };
      # image.env keeps _populate's key order (not alphabetical).
      envOrder = [ "MVM_NAME" "MVM_ENTRYPOINT_KIND" "MVM_ENTRYPOINT_UID" "MVM_AGENT_UID" "MVM_SEALED" "MVM_SERVICES" ];
      f = text: { inherit text; mode = "0644"; };
      x = text: { inherit text; mode = "0755"; };
      svcFiles = n: s:
        let base = "/etc/mvm/services/${n}"; in
        {
          "${base}/run" = x "#!/bin/sh\nexec sh -c ${u.shSingleQuote s.command}\n";
          "${base}/env" = f (u.concatStrings (u.mapAttrsToList (k: v: "${k}=${u.shellQuote v}\n") s.env));
          "${base}/restart" = f "${s.restart}\n";
        } // (if s.preStart != null && s.preStart != "" then {
          "${base}/prestart" = x "#!/bin/sh\nexec sh -c ${u.shSingleQuote s.preStart}\n";
        } else { });
      healthFiles = n: h:
        let base = "/etc/mvm/health/${n}"; in
        {
          "${base}/cmd" = f "${h.healthCmd}\n";
          "${base}/interval" = f "${toString h.healthIntervalSecs}\n";
          "${base}/timeout" = f "${toString h.healthTimeoutSecs}\n";
        };
      merge = builtins.foldl' (a: b: a // b) { };
    in
    {
      files = {
        "/etc/passwd" = f (line (e: "${at e 0}:x:${toString (at e 1)}:${toString (at e 1)}:${at e 0}:${at e 2}:${at e 3}\n"));
        "/etc/group" = f (line (e: "${at e 0}:x:${toString (at e 1)}:\n"));
        "/etc/hostname" = f "${spec.name}\n";
        "/etc/hosts" = f "127.0.0.1\tlocalhost\n127.0.1.1\t${spec.name}\n";
        "/etc/machine-id" = f "";
        "/etc/sysctl.conf" = f "net.ipv4.ip_unprivileged_port_start=0\n";
        "/etc/mvm/image.env" = f (u.concatStrings (map (k: "${k}=${u.shellQuote env.${k}}\n") envOrder));
        "/etc/mvm/mvm-meta.json" = f (u.toPrettyJSON (metaJson spec));
      }
      // (if spec.command != null then {
        "/etc/mvm/entrypoint" = x "#!/bin/sh\nexec ${builtins.concatStringsSep " " (map u.shSingleQuote spec.command)}\n";
      } else { })
      // merge (u.mapAttrsToList svcFiles spec.services)
      // merge (u.mapAttrsToList healthFiles spec.healthChecks);
      dirs =
        map (p: { path = p; mode = "0755"; uid = 0; })
          ([ "/bin" "/sbin" "/usr" "/usr/bin" "/usr/sbin" "/etc" "/etc/mvm" "/var/log" ]
            ++ builtins.filter (d: d != "/tmp" && d != "/root") baseDirs
            ++ (if spec.services != { } then [ "/etc/mvm/services" ] ++ map (n: "/etc/mvm/services/${n}") (builtins.attrNames spec.services) else [ ])
            ++ (if spec.healthChecks != { } then [ "/etc/mvm/health" ] ++ map (n: "/etc/mvm/health/${n}") (builtins.attrNames spec.healthChecks) else [ ]))
        ++ [ { path = "/tmp"; mode = "1777"; uid = 0; } { path = "/root"; mode = "0700"; uid = 0; } ]
        ++ (if uid != 0 then [ { path = "/home/app"; mode = "0755"; inherit uid; } ] else [ ]);
    };
}
