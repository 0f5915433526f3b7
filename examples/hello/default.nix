# The bundled example: a tiny real Nix closure (a static busybox and a script that uses it),
# built with nothing but /bin/sh and Debian's busybox-static, so it needs no nixpkgs checkout.
#
#   nix-build --option build-users-group "" examples/hello      (single-user Nix as root)
let
  system = builtins.currentSystem;
  run = name: script:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-e" "-c" script ];
    };

  busybox = run "busybox" ''
    /bin/mkdir -p $out/bin
    /bin/cp ${builtins.path { path = /bin/busybox; name = "busybox-static-binary"; }} $out/bin/busybox
    /bin/chmod 0555 $out/bin/busybox
    for applet in sh echo cat ls uname; do /bin/ln -s busybox $out/bin/$applet; done
  '';

  greeting = run "greeting" ''
    /bin/mkdir -p $out/share
    printf 'Hello from an image that closurepack built!\n' > $out/share/greeting.txt
  '';
in
run "hello" ''
  /bin/mkdir -p $out/bin
  {
    printf '#!${busybox}/bin/sh\n'
    printf '${busybox}/bin/cat ${greeting}/share/greeting.txt\n'
    printf '${busybox}/bin/echo "running on $(${busybox}/bin/uname -s) as uid $(${busybox}/bin/busybox id -u)"\n'
  } > $out/bin/hello
  /bin/chmod 0555 $out/bin/hello
''
