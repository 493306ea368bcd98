# mkGuest's arguments (checked in args.nix) -> a normalised spec, its metadata
# and the generated files of the guest tree. Pure builtins: this is the part tests
# evaluate against the stub package set, and it mirrors engine/imagespec.py and
# backends/ image_builder.py (`image_meta`), image_checks.py (`_validate_spec`)
# and image_tree.py (`_populate`) rule for rule, so both build paths boot the
# same guest and write the same mvm-meta.json.
let
  u = import ./util.nix;
  a = import ./args.nix;
  inherit (a) agentUid agentPath agentBinary expectedBootMs hypervisors baseDirs defaultShell;
  inherit (a) defaultSeccomp firstServiceUid;
  inherit (a) view checksFor nixpkgsCheck argv normService normHealth fileContent fileMode;

  # The ImageSpec-shaped view (snake_case, cattrs' unstructured form): what the
  # offline builder hashes as spec_hash. Nix-only inputs join the hash under a
  # separate key only when used, so a spec the offline builder could also take
  # hashes the same on both paths.
  imageSpecView = spec: {
    inherit (spec) name vcpus;
    dev = spec.devGiven;
    command = spec.command;
    services = builtins.mapAttrs (n: s: {
      inherit (s) command env restart;
      pre_start = s.preStart;
    } // (if s.uid != null then { inherit (s) uid; } else { })) spec.services;
    packages = map (p: if builtins.isString p then p else toString p) spec.packages;
    extra_files = builtins.mapAttrs (p: c: if builtins.isString c then c else toString c) spec.extraFiles;
    uids = { agent = spec.uids.agent; entrypoint = spec.uidsGiven.entrypoint; };
    memory_mib = spec.memoryMib;
    health_checks = builtins.mapAttrs (n: h: {
      health_cmd = h.healthCmd;
      health_interval_secs = h.healthIntervalSecs;
      health_timeout_secs = h.healthTimeoutSecs;
    }) spec.healthChecks;
  }
  # Newer ImageSpec fields are absent when unused (image_key.spec_json drops them too).
  // (if spec.shell != null then { inherit (spec) shell; } else { })
  // (if spec.extraFileModes != { } then { extra_file_modes = spec.extraFileModes; } else { })
  // (if spec.hypervisor != "auto" then { inherit (spec) hypervisor; } else { })
  // (if spec.seccomp != defaultSeccomp then { inherit (spec) seccomp; } else { });

  # ImageSpec.service_uids: given, else (sealed, rootless entrypoint) the next free
  # uid from 1001 by sorted name, never the agent's, the entrypoint's, nobody's or a
  # given one; else the entrypoint's.
  serviceUidsFor = sealed: uids: services:
    let
      names = builtins.attrNames services;
      given = builtins.filter (n: services.${n}.uid != null) names;
      givenUids = map (n: services.${n}.uid) given;
      own = sealed && uids.entrypoint != 0;
      free = taken: c: if builtins.elem c taken then free taken (c + 1) else c;
      step = st: n:
        if services.${n}.uid != null then st // { out = st.out // { ${n} = services.${n}.uid; }; }
        else let c = free st.taken st.next; in
          { next = c + 1; taken = st.taken ++ [ c ]; out = st.out // { ${n} = c; }; };
      start = { next = firstServiceUid; taken = [ uids.agent uids.entrypoint 65534 ] ++ givenUids; out = { }; };
    in
    if own then (builtins.foldl' step start names).out
    else builtins.mapAttrs (n: s: if s.uid != null then s.uid else uids.entrypoint) services;

  specHash = spec:
    let
      view = imageSpecView spec;
      nixOnly = { }
        // (if spec.extraTrees != { } then { extra_trees = builtins.mapAttrs (p: t: toString t) spec.extraTrees; } else { });
    in
    builtins.hashString "sha256" (builtins.toJSON (if nixOnly == { } then view else view // { nix = nixOnly; }));

in
rec {
  inherit agentUid agentBinary agentPath expectedBootMs hypervisors defaultShell;

  # mkGuest's arguments -> the normalised spec (throws coded errors on bad input:
  # nixpkgs first, as one line, then every other problem, one line each).
  normalize = fn: args:
    let missing = nixpkgsCheck fn args; in
    if missing != null then missing else
    u.checkedAll fn (checksFor fn args) (
      let v = view args; in
      rec {
        inherit (args) name;
        inherit (v) devGiven accessible packages extraTrees vcpus memoryMib hypervisor seccomp;
        dev = v.accessible;
        entrypointKind = v.kind;
        command = if v.command == null then null else argv v.command;
        shell = if v.ep ? shell then v.ep.shell else null;
        services = builtins.mapAttrs normService v.services;
        extraFiles = builtins.mapAttrs (p: f: fileContent f) v.extraFiles;
        extraFileModes = builtins.mapAttrs (p: f: fileMode f)
          (u.filterAttrs (f: fileMode f != null && fileMode f != 420) v.extraFiles);
        healthChecks = builtins.mapAttrs normHealth v.healthChecks;
        uidsGiven = { agent = v.agent; entrypoint = v.uids.entrypoint or null; };
        # The inference rules (engine/imagespec.py says the same): shell =>
        # accessible, command/services => sealed, unless `dev` says otherwise.
        sealed = !v.accessible;
        uids = { agent = v.agent; entrypoint = v.entrypoint; };
        rootlessEntrypoint = uids.entrypoint != 0;
        serviceUids = serviceUidsFor sealed uids services;
      });

  # mvm-meta.json, key for key what image_builder.image_meta writes (the IR
  # seed's snake_case fields), `builder` aside ("nix" here, "offline" there).
  metaJson = spec: {
    inherit (spec) name accessible sealed entrypointKind vcpus hypervisor;
    init_system = "busybox";
    expected_boot_ms = expectedBootMs;
    agent_binary = agentBinary;
    agent_path = agentPath;
    rootless_entrypoint = spec.rootlessEntrypoint;
    uids = spec.uids // { services = spec.serviceUids; };
    seccomp_tier = spec.seccomp;
    vmlinux_present = true;
    initrd_present = false;
    memory_mib = spec.memoryMib;
    services = builtins.attrNames spec.services;
    health_checks = builtins.attrNames spec.healthChecks;
    spec_hash = specHash spec;
    builder = "nix";
  };

  # passthru.mvm: the meta's snake_case fields (what `nix eval --json
  # '.#default.passthru.mvm'` shows in the IR seed) plus the same facts under
  # the camelCase names the other seeds use, plus the meta itself.
  passthruMvm = spec:
    let meta = metaJson spec; in
    removeAttrs meta [ "builder" ] // {
      inherit (spec) memoryMib rootlessEntrypoint;
      initSystem = meta.init_system;
      expectedBootMs = meta.expected_boot_ms;
      agentBinary = meta.agent_binary;
      agentPath = meta.agent_path;
      vmlinuxPresent = meta.vmlinux_present;
      initrdPresent = meta.initrd_present;
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
      baseUsers = [ [ "root" 0 "/root" "/bin/sh" ] [ "mvm-agent" agent "/" "/bin/false" ] ]
        ++ (if uid != 0 then [ [ "app" uid "/home/app" "/bin/sh" ] ] else [ ])
        ++ (if !(builtins.elem 65534 [ uid agent ]) then [ [ "nobody" 65534 "/" "/bin/false" ] ] else [ ]);
      # svc-<name>: one entry per service uid no earlier entry has (tree._populate).
      users = builtins.foldl' (acc: n:
        let su = spec.serviceUids.${n}; in
        if builtins.any (e: builtins.elemAt e 1 == su) acc then acc
        else acc ++ [ [ "svc-${n}" su "/" "/bin/false" ] ]) baseUsers (builtins.attrNames spec.serviceUids);
      at = builtins.elemAt;
      line = f: u.concatStrings (map f users);
      env = {
        MVM_NAME = spec.name;
        MVM_ENTRYPOINT_KIND = spec.entrypointKind;
        MVM_ENTRYPOINT_UID = toString uid;
        MVM_AGENT_UID = toString agent;
        MVM_SEALED = if spec.sealed then "1" else "0";
        MVM_SERVICES = builtins.concatStringsSep " " (builtins.attrNames spec.services);
        MVM_SHELL = if spec.shell != null then spec.shell else defaultShell;
        MVM_SECCOMP = spec.seccomp;
      };
      # image.env keeps _populate's key order (not alphabetical).
      envOrder = [ "MVM_NAME" "MVM_ENTRYPOINT_KIND" "MVM_ENTRYPOINT_UID" "MVM_AGENT_UID" "MVM_SEALED" "MVM_SERVICES" "MVM_SHELL" "MVM_SECCOMP" ];
      f = text: { inherit text; mode = "0644"; };
      x = text: { inherit text; mode = "0755"; };
      svcFiles = n: s:
        let base = "/etc/mvm/services/${n}"; in
        {
          "${base}/run" = x (runScript s.command);
          "${base}/env" = f (u.concatStrings (u.mapAttrsToList (k: v: "${k}=${u.shellQuote v}\n") s.env));
          "${base}/restart" = f "${s.restart}\n";
          "${base}/uid" = f "${toString spec.serviceUids.${n}}\n";
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
      # image_tree._run_script: argv is exec'd as is, a string runs under sh -c.
      runScript = c: if builtins.isList c
        then "#!/bin/sh\nexec ${builtins.concatStringsSep " " (map u.shSingleQuote c)}\n"
        else "#!/bin/sh\nexec sh -c ${u.shSingleQuote c}\n";
    in
    {
      files = {
        "/etc/passwd" = f (line (e: "${at e 0}:x:${toString (at e 1)}:${toString (at e 1)}:${at e 0}:${at e 2}:${at e 3}\n"));
        "/etc/group" = f (line (e: "${at e 0}:x:${toString (at e 1)}:\n"));
        "/etc/hostname" = f "${spec.name}\n";
        "/etc/mvm/name" = f "${spec.name}\n";
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
