# A tiny stand-in for nixpkgs: exactly the attributes the mvm library touches,
# as derivations that evaluate (drvPath, outPath) but refuse to build. Tests use
# it to check arguments, inference, metadata and error messages without
# nixpkgs; building an image needs the real thing (see nix/README.md).
{ system ? builtins.currentSystem }:
let
  refuse = "echo 'mvm stub-pkgs: evaluation only, build with nixpkgs' >&2; exit 1";
  stub = name: extra: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" refuse ];
  } // extra);
  runCommand = name: env: script: stub name ({ buildCommand = script; } // builtins.removeAttrs env [ "passthru" ]);
  pkg = name: stub name { } // { pname = name; };
  self = {
    inherit system runCommand;
    mvmStub = true;
    runCommandCC = runCommand;
    writeText = name: text: stub name { inherit text; };
    closureInfo = { rootPaths }: stub "closure-info" { inherit rootPaths; };
    busybox = pkg "busybox";
    e2fsprogs = pkg "e2fsprogs";
    python3 = pkg "python3";
    nodejs = pkg "nodejs";
    hello = pkg "hello";
    linuxPackages.kernel = let k = pkg "linux"; in k // { dev = pkg "linux-dev"; };
    pkgsStatic = self // { busybox = pkg "busybox-static"; };
  };
in
self
