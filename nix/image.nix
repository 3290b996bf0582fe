# Resolves the packages of one image in a package source.
#
# Every argument is data passed with --argstr; nothing from a request is
# ever parsed as Nix code.  The source is imported exactly the way nixpkgs
# is imported, so this file works unchanged against real nixpkgs and
# against the offline test package set.
#
#   sourceJson   {"type":"path","path":"/abs"} | {"type":"tarball","url":...}
#                | {"type":"git","url":...,"rev":...,"ref"?:...,"allRefs"?:true}
#   system       e.g. "x86_64-linux"; a package whose meta.platforms leaves
#                it out (or whose meta.badPlatforms names it) is reported
#                as "unsupported" rather than evaluated
#   packagesJson list of attribute paths, each a list of names
#   explainIndex index into packages, for the `explain` attribute
{ sourceJson, system, packagesJson, explainIndex ? "0" }:
let
  source = builtins.fromJSON sourceJson;

  tree =
    if source.type == "path" then source.path
    else if source.type == "tarball" then builtins.fetchTarball source.url
    else if source.type == "git" then builtins.fetchGit (
      { url = source.url; rev = source.rev; }
      // (if source ? ref then { ref = source.ref; } else {})
      // (if source ? allRefs then { allRefs = source.allRefs; } else {}))
    else throw "unknown package source type ${source.type}";

  pkgs = import tree { inherit system; config = {}; overlays = []; };

  # The revision's date where the fetcher knows it (a git commit's time),
  # for the image's creation time; null otherwise.
  sourceDate = if source.type == "git" then tree.lastModified or null else null;

  requested = builtins.fromJSON packagesJson;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M"
            "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m"
            "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;

  # Registry names are lower case and may not start with `_`, so a name
  # falls back to its unique case-insensitive match, and a name starting
  # with a digit to its `_`-prefixed attribute.
  resolveName = set: name:
    let
      digitFirst = builtins.match "[0-9].*" name != null;
      candidates = [ name ] ++ (if digitFirst then [ "_${name}" ] else []);
      exact = builtins.filter (n: builtins.hasAttr n set) candidates;
      folded = builtins.filter (n: toLower n == toLower name) (builtins.attrNames set);
    in
      if exact != [] then builtins.head exact
      else if builtins.length folded == 1 then builtins.head folded
      else null;

  # Walks one attribute path.  Each step is guarded with tryEval, since
  # nixpkgs refuses some attributes by throwing.
  walk = path: builtins.foldl' (acc:
    name:
      if acc.status != "found" then acc
      else
        let
          isSet = builtins.tryEval (builtins.isAttrs acc.value);
          real = if isSet.success && isSet.value then resolveName acc.value name else null;
        in
          if !isSet.success then acc // { status = "error"; }
          else if real == null then {
            status = "missing";
            value = null;
            # names beside the missing one, for "did you mean"
            siblings = if isSet.value then builtins.attrNames acc.value else [];
          }
          else acc // { value = acc.value.${real}; attrPath = acc.attrPath ++ [ real ]; }
  ) { status = "found"; value = pkgs; attrPath = []; } path;

  describe = path:
    let
      w = walk path;
      forced = builtins.tryEval w.value;
      isDrv = builtins.tryEval (builtins.isAttrs w.value && (w.value.type or null) == "derivation");
      drvPath = builtins.tryEval w.value.drvPath;
      outPath = builtins.tryEval w.value.outPath;
      base = { requested = path; attrPath = w.attrPath or path; inherit sourceDate; };
      # meta.platforms and meta.badPlatforms where they list systems by name
      # (nixpkgs' patterns are left to Nix itself); null when not known
      systems = attr:
        let v = builtins.tryEval (
          let x = w.value.meta.${attr} or null; in
          if builtins.isList x && builtins.all builtins.isString x then x else null);
        in if v.success then v.value else null;
      only = systems "platforms";
      bad = systems "badPlatforms";
      unsupported = (only != null && !(builtins.elem system only))
        || (bad != null && builtins.elem system bad);
    in
      if w.status == "missing" then base // { status = "missing"; siblings = w.siblings; }
      else if w.status == "error" || !forced.success || !isDrv.success then base // { status = "error"; }
      else if !isDrv.value then base // { status = "notDerivation"; }
      else if unsupported then base // {
        status = "unsupported";
        platforms = if only != null then only else [];
      }
      else if !drvPath.success || !outPath.success then base // { status = "error"; }
      else base // {
        status = "ok";
        # not `outPath`: toJSON would turn the record into that string
        drv = drvPath.value;
        out = outPath.value;
        name = w.value.name or "";
        outputName = w.value.outputName or "out";
        # for people looking a package up; never allowed to fail the report
        version = let v = builtins.tryEval (w.value.version or ""); in
          if v.success && builtins.isString v.value then v.value else "";
        description = let d = builtins.tryEval (w.value.meta.description or ""); in
          if d.success && builtins.isString d.value then d.value else "";
        # meta.license, one attribute set or a list of them (or names): the
        # string fields of each, for the image's SBOM; [] when unknown
        licenses = let
          fields = x:
            if builtins.isString x then { shortName = x; }
            else if builtins.isAttrs x then builtins.listToAttrs (builtins.concatMap (k:
              let v = x.${k} or null; in
              if builtins.isString v then [ { name = k; value = v; } ] else [])
              [ "spdxId" "shortName" "fullName" ])
            else {};
          l = builtins.tryEval (
            let raw = w.value.meta.license or null;
                all = map fields (if builtins.isList raw then raw
                                  else if raw == null then [] else [ raw ]);
            in builtins.deepSeq all all);
        in if l.success then builtins.filter (x: x != {}) l.value else [];
      };
in {
  report = map describe requested;

  # Evaluated alone, without tryEval, so Nix prints why a package that
  # `report` marked as an error cannot be evaluated.
  explain = (walk (builtins.elemAt requested (builtins.fromJSON explainIndex))).value.drvPath;
}
