# The image derivation: vmlinux + rootfs.ext4 + mvm-meta.json, the layout the
# offline builder (backends/image_builder.py) writes, so the runtime cannot tell
# the two paths apart. The guest tree is the same busybox-as-PID-1 layout
# (image_tree.`_populate`): /init and the agent come from the SAME sources in
# backends/guest/ (never a fork), the generated /etc files come from
# spec.nix's `layout`, and the filesystem is made with the same mke2fs recipe
# (mkfs.ext4 -d, fixed times/UUID/hash seed, ownership set with debugfs).
#
# Building needs a real nixpkgs (busybox static, e2fsprogs, a static C
# compiler, a kernel); evaluation needs only what `pkgs` names lazily, so the
# stub set in nix/stub-pkgs evaluates every attribute here without building.
{ pkgs, guestSrc }:
let
  u = import ./util.nix;
  q = u.shSingleQuote;

  sourceDateEpoch = 1704067200;
  mke2fsConf = ''
    [defaults]
    	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
    	default_mntopts = acl,user_xattr
    	enable_periodic_fsck = 0
    	blocksize = 4096
    	inode_size = 256
    	inode_ratio = 16384
    	reserved_ratio = 0

    [fs_types]
    	ext4 = {
    		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
    	}
  '';

  # The shared guest sources, each copied into the store on its own so a change
  # to the Python next to them does not rebuild the agent.
  initScript =
    if builtins.pathExists (guestSrc + "/init") then guestSrc + "/init"
    else u.fail "E_INIT_MISSING" "mkGuest" "the guest init ${toString guestSrc}/init does not exist";

  # Same sources and flags as backends/guest/build.py, minus -Werror: a newer
  # nixpkgs compiler must not fail the image over a new warning. Two variants: a
  # sealed image gets the agent compiled without exec/console/spawnd/PTY code.
  agentBuild = name: defines: pkgs.pkgsStatic.runCommandCC name {
    main = guestSrc + "/agent.c";
    modules = guestSrc + "/agent";
  } ''
    mkdir -p src/agent "$out/bin"
    cp "$main" src/agent.c
    cp "$modules"/*.c "$modules"/*.h src/agent/
    $CC -static -Os -std=gnu11 -Wall -Wextra ${defines} -o "$out/bin/mvm-agent" src/agent.c src/agent/*.c
  '';
  agent = agentBuild "mvm-agent" "";
  agentSealed = agentBuild "mvm-agent-sealed" "-DMVM_AGENT_SEALED";

  kernelFile = kernel:
    if kernel == null then "${pkgs.linuxPackages.kernel.dev}/vmlinux"
    else if u.isDerivation kernel then
      (if kernel ? dev then "${kernel.dev}/vmlinux" else "${kernel}/vmlinux")
    else kernel;

  script = spec: layout: kernel:
    let
      # A shell entrypoint of /bin/bash gets bash even when the packages do not list it
      # (the Dev Image seed's git/jq/ripgrep/python3), as the offline builder adds
      # bash-static: busybox has no bash.
      wantsBash = spec.entrypointKind == "shell" && spec.shell == "/bin/bash";
      drvPackages = builtins.filter (p: !(builtins.isString p)) spec.packages
        ++ (if wantsBash then [ pkgs.bash ] else [ ]);
      applets = builtins.filter builtins.isString spec.packages;
      modeOf = p: if spec.extraFileModes ? ${p} then u.toOctal spec.extraFileModes.${p} else "0644";
      textFiles = layout.files // builtins.mapAttrs (p: c: { text = c; mode = modeOf p; })
        (u.filterAttrs builtins.isString spec.extraFiles);
      copiedFiles = u.filterAttrs (c: !(builtins.isString c)) spec.extraFiles;
      closure = pkgs.closureInfo { rootPaths = drvPackages; };
      program = if spec.command != null then builtins.head spec.command
        else if spec.entrypointKind == "shell" && spec.shell != null then spec.shell
        else null;
    in
    ''
      set -euo pipefail
      fail() { echo "error: $1" >&2; exit 1; }
      tree="$PWD/tree"
      mkdir -p "$tree"
      chmod 0755 "$tree"
      : > owners
      ${u.concatStrings (map (d: ''
        mkdir -p "$tree"${q d.path}
        chmod ${d.mode} "$tree"${q d.path}
        ${if d.uid != 0 then "echo ${q d.path} ${toString d.uid} >> owners" else ""}
      '') layout.dirs)}

      install -m 0755 ${pkgs.pkgsStatic.busybox}/bin/busybox "$tree/bin/busybox"
      for applet in $("$tree/bin/busybox" --list-full); do
        name="''${applet##*/}"
        case "$name" in busybox|init|linuxrc) continue ;; esac
        ln -sfn busybox "$tree/bin/$name"
        case "$applet" in
          bin/*) ;;
          *) mkdir -p "$(dirname "$tree/$applet")"; ln -sfn /bin/busybox "$tree/$applet" ;;
        esac
      done
      # The list goes to a file, not a pipe: `grep -q` leaves at its first match, and
      # under pipefail busybox's SIGPIPE made a present applet look missing (flaky).
      "$tree/bin/busybox" --list > applets.txt
      ${u.concatStrings (map (a: ''
        grep -qx ${q a} applets.txt \
          || fail ${q "E_SPEC_PACKAGE: mkGuest: package ${u.repr a} is not a busybox applet"}
      '') applets)}
      install -m 0755 ${initScript} "$tree/init"
      install -m 0755 ${if spec.sealed then agentSealed else agent}/bin/mvm-agent "$tree/usr/bin/mvm-agent"

      ${u.concatStrings (u.mapAttrsToList (path: f: ''
        mkdir -p "$(dirname "$tree"${q path})"
        printf '%s' ${q f.text} > "$tree"${q path}
        chmod ${f.mode} "$tree"${q path}
      '') textFiles)}
      ${u.concatStrings (u.mapAttrsToList (path: src: ''
        mkdir -p "$(dirname "$tree"${q path})"
        cp --no-preserve=ownership ${src} "$tree"${q path}
        chmod ${if spec.extraFileModes ? ${path} then modeOf path else "u+w"} "$tree"${q path}
      '') copiedFiles)}
      ${u.concatStrings (u.mapAttrsToList (path: src: ''
        mkdir -p "$tree"${q path}
        cp -R --no-preserve=ownership ${src}/. "$tree"${q path}/
        chmod -R u+w "$tree"${q path}
      '') spec.extraTrees)}

      # Packages: their whole closure under /nix/store, their programs on PATH.
      ${if drvPackages == [ ] then "" else ''
        mkdir -p "$tree/nix/store"
        while read -r p; do cp -a "$p" "$tree/nix/store/"; done < ${closure}/store-paths
        chmod -R u+w "$tree/nix"
        for pkg in ${toString drvPackages}; do
          for dir in bin sbin; do
            [ -d "$pkg/$dir" ] || continue
            for f in "$pkg/$dir"/*; do
              ln -sfn "$f" "$tree/usr/$dir/$(basename "$f")"
              # /bin/bash (the Dev Image's entrypoint.shell) as on a Debian system; a
              # busybox applet already in /bin stays
              [ -e "$tree/$dir/$(basename "$f")" ] || ln -s "$f" "$tree/$dir/$(basename "$f")"
            done
          done
        done
      ''}

      ${if program == null then "" else ''
        prog=${q program}
        case "$prog" in
          /*) [ -e "$tree$prog" ] || [ -L "$tree$prog" ] || fail ${q "E_SPEC_ENTRYPOINT: mkGuest: entrypoint ${u.repr program} does not exist in the image"} ;;
          *) found=
             for d in /bin /sbin /usr/bin /usr/sbin; do
               if [ -e "$tree$d/$prog" ] || [ -L "$tree$d/$prog" ]; then found=1; fi
             done
             [ -n "$found" ] || fail ${q "E_SPEC_ENTRYPOINT: mkGuest: entrypoint ${u.repr program} does not exist in the image"} ;;
        esac
      ''}

      ${if spec.sealed then ''
        # Sealed: root-owned ELF programs are execute-only (tree._execute_only), so
        # every workload process is non-dumpable from its execve on.
        find "$tree" -type f -perm /111 -perm /044 ! -name '*.so*' -print0 \
          | while IFS= read -r -d "" f; do
              if [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                chmod go-r "$f"
              fi
            done
      '' else ""}
      # The filesystem, with ext4._make_filesystem's recipe.
      export LC_ALL=C E2FSPROGS_FAKE_TIME=${toString sourceDateEpoch} SOURCE_DATE_EPOCH=${toString sourceDateEpoch}
      printf '%s' ${q mke2fsConf} > mke2fs.conf
      export MKE2FS_CONFIG="$PWD/mke2fs.conf"
      find "$tree" -exec touch -h -d @${toString sourceDateEpoch} {} +
      entries=$( (echo /; cd "$tree" && find . -mindepth 1 | sed 's|^\.||') | sort)
      count=$(printf '%s\n' "$entries" | wc -l)
      content=$(cd "$tree" && find . -mindepth 1 -printf '%y %s\n' \
        | awk '{ s += 4096; if ($1 == "f") s += int(($2 + 4095) / 4096) * 4096 } END { print s + 0 }')
      size=$(( 2 * content ))
      [ "$size" -ge ${toString (32 * 1024 * 1024)} ] || size=${toString (32 * 1024 * 1024)}
      size=$(( (size + 1048575) / 1048576 * 1048576 ))
      h=$(printf 'mvm-rootfs-ids%s' "$out" | sha256sum | cut -c1-64)
      v4() {
        local x="$1" v
        case "''${x:16:1}" in 0|4|8|c) v=8 ;; 1|5|9|d) v=9 ;; 2|6|a|e) v=a ;; *) v=b ;; esac
        echo "''${x:0:8}-''${x:8:4}-4''${x:13:3}-$v''${x:17:3}-''${x:20:12}"
      }
      mkdir -p "$out"
      mkfs.ext4 -q -F -t ext4 -L mvm-root -N $(( 2 * count + 1024 )) -U "$(v4 "''${h:0:32}")" \
        -E "hash_seed=$(v4 "''${h:32:32}"),root_owner=0:0,lazy_itable_init=0" \
        -d "$tree" "$out/rootfs.ext4" "$(( size / 1024 ))k"
      printf '%s\n' "$entries" | while IFS= read -r p; do
        owner=$(awk -v p="$p" '$1 == p { print $2 }' owners)
        owner="''${owner:-0}"
        printf 'sif "%s" uid %s\nsif "%s" gid %s\n' "$p" "$owner" "$p" "$owner"
        for field in atime mtime ctime crtime; do
          printf 'sif "%s" %s @%s\n' "$p" "$field" ${toString sourceDateEpoch}
        done
      done > debugfs.cmd
      debugfs -w -f debugfs.cmd "$out/rootfs.ext4" > /dev/null 2> debugfs.err
      if grep -v '^debugfs ' debugfs.err >&2; then fail "E_IMAGE_FS: mkGuest: debugfs failed"; fi
      e2fsck -f -n "$out/rootfs.ext4"
      cp ${q "${kernelFile kernel}"} "$out/vmlinux"
      cp "$tree/etc/mvm/mvm-meta.json" "$out/mvm-meta.json"
    '';
in
{
  inherit agent agentSealed initScript;
  # The image derivation for a normalised spec and its layout.
  image = spec: layout: kernel:
    pkgs.runCommand "mvm-image-${spec.name}" {
      nativeBuildInputs = [ pkgs.e2fsprogs ];
    } (script spec layout kernel);
}
