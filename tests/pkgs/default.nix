# A small package set shaped like nixpkgs, for offline tests and demos.
#
# Every derivation's builder is Debian's static busybox, imported from the
# host as a folder holding only that binary, so its store path ends in
# `/busybox` and busybox can pick its applet from argv[0].  It takes the
# arguments nixpkgs takes, so nix/ imports it exactly like nixpkgs.
{ system ? builtins.currentSystem, config ? {}, overlays ? [], ... }:
let
  busybox = builtins.path {
    name = "busybox";
    path = if builtins.pathExists /usr/bin/busybox then /usr/bin else /bin;
    filter = path: type: baseNameOf path == "busybox";
  };
  bb = "${busybox}/busybox";

  licenses = {
    gpl3Plus = { spdxId = "GPL-3.0-or-later"; shortName = "gpl3Plus";
                 fullName = "GNU General Public License v3.0 or later"; free = true; };
    gpl2Only = { spdxId = "GPL-2.0-only"; shortName = "gpl2Only";
                 fullName = "GNU General Public License v2.0 only"; free = true; };
    lgpl21Plus = { spdxId = "LGPL-2.1-or-later"; shortName = "lgpl21Plus";
                   fullName = "GNU Lesser General Public License v2.1 or later"; free = true; };
    testOnly = { shortName = "testOnly"; fullName = "The test set's own licence"; free = true; };
  };

  # mk: a derivation whose build script runs in busybox sh with every
  # applet on PATH.
  mk = { pname, version ? "1.0", script, passthru ? {}, features ? [] }:
    derivation ({
      name = "${pname}-${version}";
      inherit system;
      builder = bb;
      args = [ "sh" "-euc" ''
        ${bb} mkdir -p "$TMPDIR/tools"
        ${bb} --install -s "$TMPDIR/tools"
        export PATH="$TMPDIR/tools"
        ${script}
      '' ];
    } // (if features == [] then {} else { requiredSystemFeatures = features; })) // { inherit pname version; meta = { description = "test package ${pname}"; }; } // passthru;

  # A program: a busybox shell script in $out/bin/<prog>.
  script = pname: prog: body: extra: mk {
    inherit pname;
    script = ''
      mkdir -p $out/bin
      printf '%s\n' '#!${bb} sh' ${escape body} > $out/bin/${prog}
      chmod 0755 $out/bin/${prog}
      ${extra}
    '';
  };
  escape = s: "'" + builtins.replaceStrings ["'"] ["'\\''"] s + "'";

  # Applets reached through symlinks to the busybox binary.
  applets = pname: names: mk {
    inherit pname;
    script = ''
      mkdir -p $out/bin
      for a in ${builtins.concatStringsSep " " names}; do ln -s ${bb} $out/bin/$a; done
    '';
  };

  # A library other packages share, so images that need it share its layer.
  libshared = mk {
    pname = "libshared";
    script = ''
      mkdir -p $out/lib
      head -c 65536 /dev/zero | tr '\0' 'x' > $out/lib/libshared.so
    '';
  };

  wideDeps = builtins.genList (i: mk {
    pname = "wide-dep-${toString i}";
    script = ''mkdir -p $out/share; echo ${toString i} > $out/share/dep-${toString i}'';
  }) 130;

  # Packages for bench/ only: sizes like real ones, made of random bytes
  # (compiled code compresses little) and text (which compresses well),
  # with many small files where `files` says so.  Each refers to its deps.
  benchPkg = { pname, mb, files ? 0, deps ? [] }: mk {
    inherit pname;
    script = ''
      mkdir -p $out/lib $out/share/${pname} $out/nix-support
      head -c $((${toString mb} * 524288)) /dev/urandom > $out/lib/lib${pname}.so
      seq 1 $((${toString mb} * 74000)) > $out/share/${pname}/data.txt
      if [ ${toString files} -gt 0 ]; then
        seq 1 $((${toString files} * 700)) | awk -v d=$out/share/${pname} \
          '{ f = sprintf("%s/f%06d", d, int((NR - 1) / 700)); print > f; if (NR % 700 == 0) close(f) }'
      fi
      echo ${builtins.concatStringsSep " " (map toString deps)} > $out/nix-support/deps
    '';
  };

  bench = rec {
    glibc = benchPkg { pname = "glibc"; mb = 12; files = 400; };
    zlib = benchPkg { pname = "zlib"; mb = 1; deps = [ glibc ]; };
    openssl = benchPkg { pname = "openssl"; mb = 6; files = 100; deps = [ glibc zlib ]; };
    ncurses = benchPkg { pname = "ncurses"; mb = 3; files = 1500; deps = [ glibc ]; };
    readline = benchPkg { pname = "readline"; mb = 1; deps = [ ncurses ]; };
    bash = benchPkg { pname = "bash"; mb = 2; files = 50; deps = [ readline ]; };
    coreutils = benchPkg { pname = "coreutils"; mb = 4; files = 100; deps = [ glibc openssl ]; };
    perl-modules = benchPkg { pname = "perl-modules"; mb = 20; files = 3000; deps = [ glibc ]; };
    perl = benchPkg { pname = "perl"; mb = 8; deps = [ perl-modules zlib ]; };
    libssh2 = benchPkg { pname = "libssh2"; mb = 1; deps = [ openssl ]; };
    curl = benchPkg { pname = "curl"; mb = 3; deps = [ openssl zlib libssh2 ]; };
    git = benchPkg { pname = "git"; mb = 15; files = 600; deps = [ perl curl bash ]; };
    htop = benchPkg { pname = "htop"; mb = 1; deps = [ ncurses ]; };
    python-stdlib = benchPkg { pname = "python-stdlib"; mb = 25; files = 4000; deps = [ glibc ]; };
    python = benchPkg { pname = "python"; mb = 10; deps = [ python-stdlib openssl zlib readline ]; };
    vim = benchPkg { pname = "vim"; mb = 12; files = 2000; deps = [ ncurses python ]; };

    # One store path of 96 MiB, one file: half random bytes (compiled code
    # compresses little), half text, 1 MiB of each in turn, so every block
    # of its layer is work for the compressor.  For bench/coldpull.py: a
    # one-path image whose single layer is big.
    big96 = mk {
      pname = "big96";
      script = ''
        mkdir -p $out/lib
        seq 1 9000000 > $TMPDIR/text
        i=0
        while [ $i -lt 48 ]; do
          head -c 1048576 /dev/urandom
          dd if=$TMPDIR/text bs=1048576 skip=$i count=1 2>/dev/null
          i=$((i + 1))
        done > $out/lib/libbig96.so
        [ "$(wc -c < $out/lib/libbig96.so)" -eq 100663296 ]
      '';
    };

    # About 1 GB: four parts of mostly large files, four of small files.
    huge = benchPkg { pname = "huge"; mb = 1; deps = map (i: benchPkg {
      pname = "huge-data-${toString i}"; mb = 200;
    }) [ 0 1 2 3 ] ++ map (i: benchPkg {
      pname = "huge-files-${toString i}"; mb = 1; files = 12000;
    }) [ 0 1 2 3 ]; };
  };

  self = {
    inherit bench;

    # Licences as nixpkgs' lib.licenses writes them: with an SPDX id, a
    # list of them, and one SPDX does not know.
    hello = script "hello" "hello" ''echo "Hello, world!"'' "" // {
      meta = { description = "test package hello"; license = licenses.gpl3Plus; };
    };

    bashInteractive = script "bash-interactive" "bash" ''exec ${bb} sh "$@"''
      "ln -s ${bb} $out/bin/sh";

    coreutils = applets "coreutils" [
      "basename" "cat" "chmod" "cp" "cut" "date" "dirname" "echo" "env" "false"
      "head" "id" "ln" "ls" "mkdir" "mv" "printf" "pwd" "readlink" "rm" "sleep"
      "sort" "stat" "tail" "tee" "touch" "tr" "true" "uname" "wc" "whoami"
    ];

    cacert = mk {
      pname = "nss-cacert";
      script = ''
        mkdir -p $out/etc/ssl/certs
        echo "# test CA bundle" > $out/etc/ssl/certs/ca-bundle.crt
      '';
    };

    iana-etc = mk {
      pname = "iana-etc";
      script = ''
        mkdir -p $out/etc
        printf 'ip\t0\tIP\ntcp\t6\tTCP\nudp\t17\tUDP\n' > $out/etc/protocols
        printf 'http\t80/tcp\nhttps\t443/tcp\n' > $out/etc/services
      '';
    };

    moreutils = script "moreutils" "sponge" ''t=$(${bb} cat); printf "%s\n" "$t" > "$1"'' "";

    nano = script "nano" "nano" ''echo "GNU nano (test package set) 1.0"'' "";

    git = script "git" "git" ''echo "git version 2.0.0 (test, ${libshared}/lib/libshared.so)"'' "" // {
      meta = { description = "test package git"; license = [ licenses.gpl2Only licenses.lgpl21Plus ]; };
    };

    htop = script "htop" "htop" ''echo "htop 3.0.0 (test, ${libshared}/lib/libshared.so)"'' "" // {
      meta = { description = "test package htop"; license = licenses.testOnly; };
    };

    curl = script "curl" "curl" ''echo "curl 8.0.0 (test, ${libshared}/lib/libshared.so)"'' "";

    inherit libshared;

    # Names a registry path cannot spell as they are: upper case, and a
    # leading digit (nixpkgs prefixes those with `_`).
    SDL2 = script "SDL2" "sdl2-config" ''echo "2.0.0"'' "";
    _1password = script "1password" "op" ''echo "op 1.0 (test)"'' "";

    # A nested package set, reached as `langPackages.foo`.
    langPackages = {
      recurseForDerivations = true;
      foo = script "lang-foo" "foo" ''echo "foo from langPackages"'' "";
      bar = script "lang-bar" "bar" ''echo "bar from langPackages"'' "";
    };

    # Files, directories, a symlink, a hardlink and odd modes in one output.
    filetypes = mk {
      pname = "filetypes";
      script = ''
        mkdir -p $out/share/filetypes/sub
        echo data > $out/share/filetypes/file
        ln $out/share/filetypes/file $out/share/filetypes/hardlink
        ln -s file $out/share/filetypes/symlink
        echo secret > $out/share/filetypes/sub/readonly
        chmod 0444 $out/share/filetypes/sub/readonly
      '';
    };

    # A closure wider than any layer budget.
    wide = mk {
      pname = "wide";
      script = ''
        mkdir -p $out/share
        echo ${builtins.concatStringsSep " " (map toString wideDeps)} > $out/share/deps
      '';
    };

    # Build failures, one of them very talkative.
    broken = mk {
      pname = "broken";
      script = ''
        echo "checking for a working compiler... no" >&2
        echo "broken: this package fails to build on purpose" >&2
        exit 1
      '';
    };
    # Killed by SIGKILL the first time it builds, as the out-of-memory
    # killer kills a builder, and built the next time.  It tells the two
    # apart by a marker in the machine's /tmp (Debian's Nix builds without
    # a sandbox) that its salt names: tests give it a salt of their own and
    # remove the marker (tests/conftest.py: killed_once_set).
    killed-once = mk {
      pname = "killed-once";
      script = ''
        marker=/tmp/registry-killed-once-none
        if [ ! -e "$marker" ]; then
          touch "$marker"
          kill -9 $$
        fi
        mkdir -p $out/bin
        printf '%s\n' '#!${bb} sh' 'echo "built on the second try"' > $out/bin/killed-once
        chmod 0755 $out/bin/killed-once
      '';
    };
    # Fails as a build on a full disk fails: a write meets ENOSPC (/dev/full).
    disk-full = mk {
      pname = "disk-full";
      script = ''
        mkdir -p $out
        echo "the build's output" > /dev/full
      '';
    };
    # Its log holds markup that a page must show, not run.
    hostile-log = mk {
      pname = "hostile-log";
      script = ''
        echo '<script>document.title="pwned"</script><b>bold</b> & more' >&2
        exit 1
      '';
    };
    chatty-broken = mk {
      pname = "chatty-broken";
      script = ''
        i=0
        while [ $i -lt 40000 ]; do
          echo "chatty-broken: log line $i of a very long build log, padding padding padding" >&2
          i=$((i + 1))
        done
        echo "chatty-broken: the last words of the build" >&2
        exit 2
      '';
    };
    # Builds fine but writes megabytes to its log first.
    chatty = mk {
      pname = "chatty";
      script = ''
        i=0
        while [ $i -lt 40000 ]; do
          echo "chatty: log line $i of a very long build log, padding padding padding" >&2
          i=$((i + 1))
        done
        mkdir -p $out/bin
        ln -s ${bb} $out/bin/true
      '';
    };

    # Takes a moment to build, so concurrent pulls overlap with it.
    sleepy = mk {
      pname = "sleepy";
      script = ''
        sleep 2
        mkdir -p $out/bin
        ln -s ${bb} $out/bin/sleep
      '';
    };
    sleepy-too = mk {
      pname = "sleepy-too";
      script = ''
        sleep 2
        mkdir -p $out/share
        echo zzz > $out/share/sleepy-too
      '';
    };

    # A large file that does not compress, for layers that take a while.
    bigfile = mk {
      pname = "bigfile";
      script = ''
        mkdir -p $out/share
        head -c 120000000 /dev/urandom > $out/share/big
      '';
    };

    # Bytes that deflate cannot shrink (bzip2's output of pseudo-random
    # text), the same in every build: its layer is stored as plain tar.
    # Its program prints the data's MD5, to check it arrived whole.
    incompressible = mk {
      pname = "incompressible";
      script = ''
        mkdir -p $out/share $out/bin
        awk 'BEGIN { srand(7); for (i = 0; i < 1800000; i++) printf "%08x", int(rand() * 4294967296) }' \
          | bzip2 -9 > $out/share/incompressible
        printf '%s\n' '#!${bb} sh' "exec ${bb} md5sum $out/share/incompressible" > $out/bin/incompressible
        chmod 0755 $out/bin/incompressible
      '';
    };

    # Outlasts any short NIX_TIMEOUT; its `sleep` child must be killed with it.
    slow = mk {
      pname = "slow";
      script = ''
        sleep 3600
        mkdir -p $out
      '';
    };

    # Takes a while to build, but less than a NIX_TIMEOUT: long enough that a
    # pull stops waiting for it.  Tests copy the set with their own time and
    # a salt in its script (tests/conftest.py: drowsy_set), to watch it build.
    drowsy = script "drowsy" "drowsy" "echo awake" ''
      sleep 25 # salt: none
    '';

    # Built only by a machine with the system feature `registry-builder`
    # (tests/nixstore.py: RemoteBuilder), which this one lacks: a Nix
    # remote builder.  A salt in its script (tests/conftest.py:
    # remote_set) makes it new for each test.
    remote-only = mk {
      pname = "remote-only";
      features = [ "registry-builder" ];
      script = ''
        mkdir -p $out/bin
        printf '%s\n' '#!${bb} sh' 'echo "built by the remote builder"' > $out/bin/remote-only
        chmod 0755 $out/bin/remote-only
        echo salt: none > $out/salt
      '';
    };

    # For x86_64-linux only, as its meta says: an index for several
    # platforms leaves the others out.
    amd64-only = script "amd64-only" "amd64-only" ''echo "x86_64 only"'' "" // {
      meta = { description = "test package amd64-only"; platforms = [ "x86_64-linux" ]; };
    };
    # Builds on every platform but aarch64-linux.
    no-arm = mk {
      pname = "no-arm";
      script = ''
        if [ "$system" = aarch64-linux ]; then
          echo "no-arm: this package does not build on aarch64-linux" >&2
          exit 1
        fi
        mkdir -p $out/bin
        ln -s ${bb} $out/bin/no-arm
      '';
    };

    # Refusals the way nixpkgs throws them.
    unfree-tool = throw "Package ‘unfree-tool-1.0’ has an unfree license (‘unfree’), refusing to evaluate.";
    insecure-tool = throw "Package ‘insecure-tool-0.1’ is marked as broken, refusing to evaluate.";
    notAPackage = { description = "an attribute set that is not a derivation"; };
    someString = "just a string";
  };
in self
