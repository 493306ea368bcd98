# One offline package: a REAL derivation made from this Debian machine's
# installed packages (manifest.json, written by engine/builders/offline_pkgs.py):
# their files copied under $out/<same path> (symlinks kept, absolute ones pointed
# into $out), `bin/` links for the programs, and the shared-library closure of
# every ELF file (ldd, the ELF interpreter included) in $out/lib, with the ELF
# files patched (patchelf) to use that interpreter and that directory. The
# result needs nothing outside $out, so it runs in a busybox guest that has no
# glibc of its own. Impure by design: the builder reads /usr (sandbox = false),
# and the Debian versions are in the derivation so an upgrade rebuilds it.
{ runCommand }:
_name: pkg:
let
  firstDeb = builtins.head pkg.debs;
  version = builtins.replaceStrings [ ":" "~" ] [ "-" "_" ] (pkg.versions.${firstDeb} or "0");
in
# Named after the first Debian package, not the Nix name, so that aliases
# (python3/python311, nodejs/nodejs_20, ...) are one derivation, built once.
runCommand "${firstDeb}-${version}" {
  pname = firstDeb;
  inherit version;
  debs = pkg.debs;
  debVersions = builtins.toJSON pkg.versions;
  files = builtins.concatStringsSep "\n" pkg.files + "\n";
  passAsFile = [ "files" ];  # python's file list is larger than one environment string may be
} ''
  set -euo pipefail
  export LC_ALL=C
  fail() { echo "$1" >&2; exit 1; }
  command -v patchelf >/dev/null \
    || fail "E_OFFLINE_PKG_MISSING: offline-pkgs: patchelf is not installed (run ./scripts/setup)"
  mkdir -p "$out/bin" "$out/lib"

  # 1. The packages' files, at their own paths under $out.
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    [ -e "$f" ] || [ -L "$f" ] || fail "E_OFFLINE_PKG_MISSING: offline-pkgs: $f (of ${firstDeb}) is gone; run ./scripts/setup"
    mkdir -p "$out$(dirname "$f")"
    cp -P --preserve=mode "$f" "$out$f"
  done < "$filesPath"
  chmod -R u+w,ug-s "$out"

  # 2. Absolute symlinks (/etc/alternatives, /etc/python3.11/...) point into $out,
  #    or become a copy of what they point at on this host.
  find "$out" -type l -print0 | while IFS= read -r -d "" l; do
    t=$(readlink "$l")
    case "$t" in "$out"*|"$NIX_STORE"/*) continue ;; /*) ;; *) continue ;; esac
    if [ -e "$out$t" ] || [ -L "$out$t" ]; then
      ln -sfn "$out$t" "$l"
    elif [ -f "''${l#"$out"}" ]; then
      rm "$l"; cp -L --preserve=mode "''${l#"$out"}" "$l"; chmod u+w "$l"
    else
      echo "offline-pkgs: ${firstDeb}: dropping the dangling link ''${l#"$out"} -> $t" >&2; rm "$l"
    fi
  done

  # 3. The ELF files, and the closure of their shared libraries (flat, by soname).
  is_elf() { local m; IFS= read -r -N 4 m < "$1" 2>/dev/null && [ "$m" = $'\x7fELF' ]; }
  : > elfs; : > libs
  while IFS= read -r -d "" f; do
    is_elf "$f" || continue
    out_of_ldd=$(ldd "$f" 2>/dev/null) || continue   # static, or not loadable here
    printf '%s\n' "$f" >> elfs
    printf '%s\n' "$out_of_ldd" | while read -r a b c _; do
      if [ "$b" = "=>" ]; then
        if [ "$c" = "not" ]; then echo "offline-pkgs: ${firstDeb}: ''${f#"$out"} needs $a, not found here" >&2
        elif [ -n "$c" ]; then echo "$a $c"; fi
      else
        case "$a" in /*) echo "$(basename "$a") $a" ;; esac
      fi
    done >> libs
  done < <(find "$out" -path "$out/lib" -prune -o -type f -print0; find "$out/lib" -mindepth 2 -type f -print0)
  sort -u libs | while read -r so path; do
    [ -e "$out/lib/$so" ] || cp -L "$path" "$out/lib/$so"
  done
  chmod -R u+w "$out/lib"

  # 4. Every dynamic ELF file uses $out/lib's interpreter and libraries (DT_RPATH,
  #    which also serves the libraries they load); closure libraries that carry
  #    a search path of their own get $out/lib instead.
  while IFS= read -r f; do
    if interp=$(patchelf --print-interpreter "$f" 2>/dev/null); then
      patchelf --set-interpreter "$out/lib/$(basename "$interp")" "$f"
    fi
    patchelf --force-rpath --set-rpath "$out/lib" "$f"
  done < elfs
  for l in "$out"/lib/*; do
    [ -f "$l" ] && [ ! -L "$l" ] || continue
    case "$(basename "$l")" in ld-linux*) continue ;; esac
    if [ -n "$(patchelf --print-rpath "$l" 2>/dev/null)" ]; then
      patchelf --force-rpath --set-rpath "$out/lib" "$l"
    fi
  done

  # 5. bin/ links for the programs (PostgreSQL's own bin/ first: /usr/bin has
  #    only postgresql-common's perl wrappers); the first name wins.
  cd "$out"
  for d in usr/lib/postgresql/*/bin usr/bin usr/sbin sbin usr/games; do
    [ -d "$out/$d" ] || continue
    for f in "$out/$d"/*; do
      [ -e "$f" ] || continue   # a link to something no listed package has
      b=$(basename "$f")
      [ -e "$out/bin/$b" ] || [ -L "$out/bin/$b" ] || ln -s "../$d/$b" "$out/bin/$b"
    done
  done
''
