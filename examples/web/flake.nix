{
  description = "A busybox httpd microVM, built with mvm's Nix library";

  # With Nix and nixpkgs: `mvmctl build .` runs `nix build` (host, ssh or vsock builder).
  # Without them, `mvmctl build` evaluates this flake with mvm's stub package set and
  # builds the same image with the offline builder, saying so.
  inputs.mvm.url = "path:../../nix";

  outputs = { self, mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "web";
      services.web = { command = "httpd -f -p 80 -h /srv/www"; };
      healthChecks.web = { healthCmd = "wget -q -O /dev/null http://127.0.0.1/"; healthIntervalSecs = 2; };
      packages = [ "httpd" "wget" ];
      extraFiles."/srv/www/index.html" = "<h1>Hello from an mvm flake</h1>\n";
      dev = true;
    };
  };
}
