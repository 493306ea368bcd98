# Python: the wrapper is backends/guest/wrapper.py (the file the offline builder
# bakes too) behind a two-line sh/Python header naming the interpreter, so the
# runner runs as `sh runner` (what /etc/mvm/entrypoint does) or as an executable.
{ pkgs }:
let
  python = pkgs.python3;
  wrapper = builtins.replaceStrings [ "from __future__ import annotations\n" ] [ "" ]
    (builtins.readFile ../../../../backends/guest/wrapper.py);
in
{
  language = "python";
  servicePackages = [ python ];
  interpreter = "${python}/bin/python3";
  # variant: "oneshot" (no concurrency block) or "longrunning" (ADR-0011 warm pool).
  runnerScript = variant:
    "#!/bin/sh\n''''exec ${python}/bin/python3 -s \"$0\" --variant ${variant} \"$@\" #'''\n" + wrapper;
}
