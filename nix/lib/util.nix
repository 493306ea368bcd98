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

  # Every failing check, one `E_CODE: fn: message` line each, joined by newlines
  # (a Nix throw carries one string; backends/nix_meta.py splits it back into
  # one error per line). Validators report every problem, not the first.
  allErrors = fn: checks:
    let bad = builtins.filter (c: !c.ok) checks;
    in if bad == [ ] then null
    else throw (builtins.concatStringsSep "\n" (map (c: "${c.code}: ${fn}: ${c.msg}") bad));

  # Evaluate `value` only after every check passed (all failures reported at once).
  checkedAll = fn: checks: value:
    let err = allErrors fn checks;
    in if err == null then value else err;

  # Octal digits (a string "0755" or an int written 755 / 0755) -> the number, or null.
  parseMode = m:
    let
      s = if builtins.isInt m then toString m else if builtins.isString m then m else "";
      digits = builtins.match "0*([0-7]{1,4})" s;
      chars = d: builtins.genList (i: builtins.substring i 1 d) (builtins.stringLength d);
    in
    if digits == null then null
    else builtins.foldl' (acc: c: acc * 8 + builtins.fromJSON c) 0 (chars (builtins.head digits));

  # 420 -> "0644": the octal text chmod takes.
  toOctal = n:
    let go = x: if x == 0 then "" else go (x / 8) + toString (x - (x / 8) * 8);
        s = go n;
    in "0" + (if s == "" then "0" else s);

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
