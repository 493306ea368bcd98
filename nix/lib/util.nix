# Helpers that need nothing but builtins, so the whole library evaluates against
# any package set (the stub set in nix/stub-pkgs included) without nixpkgs' lib.
rec {
  # Every user-facing failure is `throw "E_CODE: fn: message"`: the code is the
  # same stable code the offline builder (engine/imagespec.py,
  # backends/image_builder.py) raises for the same mistake, and
  # backends/nix_meta.py turns the line back into a ConfigError with that code.
  fail = code: fn: message: throw "${code}: ${fn}: ${message}";

  # First failing check wins, in the order given (the offline builder's order).
  # A check is { ok = bool; code; msg; }.
  firstError = fn: checks:
    let bad = builtins.filter (c: !c.ok) checks;
    in if bad == [ ] then null else fail (builtins.head bad).code fn (builtins.head bad).msg;

  # Evaluate `value` only after `checks` passed.
  checked = fn: checks: value:
    let err = firstError fn checks;
    in if err == null then value else err;

  matches = re: s: builtins.isString s && builtins.match re s != null;

  splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);

  hasNewline = s: builtins.length (builtins.split "\n" s) > 1;

  concatMap = f: xs: builtins.concatLists (map f xs);

  concatStrings = builtins.concatStringsSep "";

  mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (builtins.attrNames attrs);

  # Python repr() of a plain string, for messages that mirror the offline builder's.
  repr = s: "'" + builtins.replaceStrings [ "\\" "'" ] [ "\\\\" "\\'" ] (toString s) + "'";

  # Python's shlex.quote: safe words stay bare, everything else is single-quoted.
  shellQuote = s:
    if s == "" then "''"
    else if builtins.match "[A-Za-z0-9_@%+=:,./-]+" s != null then s
    else "'" + builtins.replaceStrings [ "'" ] [ "'\"'\"'" ] s + "'";

  # image_tree._sh_quote: always single-quoted, so scripts read uniformly.
  shSingleQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # Keys of `attrs` that are not in `allowed`.
  unknownKeys = allowed: attrs:
    builtins.filter (k: !(builtins.elem k allowed)) (builtins.attrNames attrs);

  showList = xs: "[" + builtins.concatStringsSep ", " (map repr xs) + "]";

  isDerivation = x: builtins.isAttrs x && (x.type or null) == "derivation";

  # json.dumps(value, indent=2, sort_keys=True) (ensure_ascii aside), so the Nix
  # image's mvm-meta.json reads exactly like the offline builder's.
  toPrettyJSON = value:
    let
      go = indent: v:
        let inner = indent + "  ";
        in
        if builtins.isAttrs v then
          (if v == { } then "{}" else
            "{\n" + builtins.concatStringsSep ",\n"
              (map (k: inner + builtins.toJSON k + ": " + go inner v.${k}) (builtins.attrNames v))
            + "\n" + indent + "}")
        else if builtins.isList v then
          (if v == [ ] then "[]" else
            "[\n" + builtins.concatStringsSep ",\n" (map (x: inner + go inner x) v)
            + "\n" + indent + "]")
        else builtins.toJSON v;
    in
    go "" value + "\n";

  filterAttrs = pred: attrs: builtins.listToAttrs (map (n: { name = n; value = attrs.${n}; })
    (builtins.filter (n: pred attrs.${n}) (builtins.attrNames attrs)));
}
