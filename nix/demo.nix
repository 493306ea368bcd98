# mvm.backends.demo.DEMO_SPEC as mkGuest arguments (tests check they stay equal).
{
  name = "demo";
  services.web = { command = "httpd -f -p 80 -h /srv/www"; restart = "always"; };
  healthChecks.web = {
    healthCmd = "wget -q -O /dev/null http://127.0.0.1/";
    healthIntervalSecs = 2;
    healthTimeoutSecs = 2;
  };
  packages = [ "httpd" "wget" ];
  extraFiles."/srv/www/index.html" = "<h1>Hello from mvm</h1>\n<p>Served by busybox httpd inside a microVM.</p>\n";
  dev = false;
  vcpus = 1;
  memory_mib = 256;
}
