# Node: a stdlib-only wrapper with the same protocol as the Python one (value on
# stdout, {error} envelope on stderr + exit 1; prod strips stacks and paths; depth
# 64, duplicate keys and non-finite numbers rejected; stdin capped at 16 MiB).
{ pkgs }:
let node = pkgs.nodejs; in
{
  language = "node";
  servicePackages = [ node ];
  interpreter = "${node}/bin/node";
  runnerScript = variant: ''
    #!/bin/sh
    //bin/true; exec ${node}/bin/node "$0" --variant ${variant} "$@"
    "use strict";
    const fs = require("fs");
    const path = require("path");
    const MAX_INPUT = 16 * 1024 * 1024, MAX_DEPTH = 64;
    const cfg = JSON.parse(fs.readFileSync(process.env.MVM_WRAPPER_JSON || "/etc/mvm/wrapper.json", "utf8"));
    const prod = cfg.mode !== "dev";
    const variant = ${builtins.toJSON variant};
    const mode = process.env.MVM_RUN_MODE || "boot";
    class WErr extends Error { constructor(code, msg, cause) { super(msg); this.code = code; this.cause0 = cause; } }
    function envelope(e) {
      const c = e.cause0;
      const body = { code: e.code, type: c ? (c.name || "Error") : "WrapperError",
        message: prod ? (c ? `''${c.name || "Error"} (details withheld in prod images)` : e.message.replace(/\/[\w.@+~\/-]+/g, "<path>")) : e.message };
      if (c && !prod && c.stack) body.traceback = String(c.stack);
      return JSON.stringify({ error: body });
    }
    function checkDepth(t) {
      let d = 0, s = false, esc = false;
      for (const ch of t) {
        if (s) { if (esc) esc = false; else if (ch === "\\") esc = true; else if (ch === '"') s = false; }
        else if (ch === '"') s = true;
        else if (ch === "[" || ch === "{") { if (++d > MAX_DEPTH) throw new WErr("E_INPUT_DEPTH", `input nested deeper than ''${MAX_DEPTH} levels`); }
        else if (ch === "]" || ch === "}") d--;
      }
    }
    function noDupes(t) { // duplicate keys: JSON.parse keeps the last, so scan objects first
      const re = /"((?:[^"\\]|\\.)*)"\s*:/g; const stack = [new Set()]; let s = false, esc = false, start = 0;
      for (let i = 0; i < t.length; i++) {
        const ch = t[i];
        if (s) { if (esc) esc = false; else if (ch === "\\") esc = true; else if (ch === '"') { s = false;
          let j = i + 1; while (j < t.length && /\s/.test(t[j])) j++;
          if (t[j] === ":") { const k = JSON.parse(t.slice(start, i + 1)); const top = stack[stack.length - 1];
            if (top.has(k)) throw new WErr("E_INPUT_DUPLICATE_KEY", "duplicate key in input"); top.add(k); } } }
        else if (ch === '"') { s = true; start = i; }
        else if (ch === "{") stack.push(new Set()); else if (ch === "}") stack.pop();
      }
    }
    function decode(buf) {
      if (buf.length > MAX_INPUT) throw new WErr("E_INPUT_TOO_LARGE", `input is ''${buf.length} bytes (limit ''${MAX_INPUT})`);
      const t = buf.toString("utf8"); checkDepth(t); noDupes(t);
      let doc; try { doc = JSON.parse(t); } catch (e) { throw new WErr("E_INPUT_JSON", "input is not valid JSON"); }
      const finite = (v) => { if (typeof v === "number" && !Number.isFinite(v)) throw new WErr("E_INPUT_NONFINITE", "non-finite number in input");
        if (v && typeof v === "object") Object.values(v).forEach(finite); };
      finite(doc);
      if (!Array.isArray(doc) || doc.length !== 2 || !Array.isArray(doc[0]) || !doc[1] || typeof doc[1] !== "object" || Array.isArray(doc[1]))
        throw new WErr("E_INPUT_SHAPE", "input must be [args, kwargs]: a list and an object");
      return doc;
    }
    let calls = 0;
    function load() {
      process.chdir(cfg.working_dir || "/app");
      let mod; try { mod = require(path.resolve(cfg.working_dir || "/app", cfg.module)); }
      catch (e) { throw new WErr("E_FUNCTION_LOAD", `cannot load ''${cfg.module}.''${cfg.function}`, e); }
      const fn = mod[cfg.function];
      if (typeof fn !== "function") throw new WErr("E_FUNCTION_LOAD", `''${cfg.module}.''${cfg.function} is not callable`);
      return fn;
    }
    async function handle(buf) {
      if (variant === "oneshot" && ++calls > 1) throw new WErr("E_WRAPPER_REUSED", "the oneshot wrapper dispatches once per process (second invocation)");
      const [args, kwargs] = decode(buf);
      const fn = load();
      let r; try { r = await fn(...args, ...(Object.keys(kwargs).length ? [kwargs] : [])); }
      catch (e) { throw new WErr("E_FUNCTION_FAILED", `''${e && e.name}: ''${e && e.message}`, e); }
      return JSON.stringify(r === undefined ? null : r);
    }
    if (mode === "boot") {
      try { load(); console.error("mvm-function: ready"); } catch (e) { console.error(`mvm-function: ''${e.code}`); }
      setInterval(() => {}, 1 << 30);
    } else if (mode === "oneshot") {
      const parts = []; let n = 0;
      process.stdin.on("data", (c) => { n += c.length; if (n <= MAX_INPUT + 1) parts.push(c); });
      process.stdin.on("end", async () => {
        try { process.stdout.write(await handle(Buffer.concat(parts))); process.exitCode = 0; }
        catch (e) { process.stderr.write("\n" + envelope(e instanceof WErr ? e : new WErr("E_FUNCTION_FAILED", "failed", e)) + "\n"); process.exitCode = 1; }
      });
    } else {
      process.stderr.write(envelope(new WErr("E_WRAPPER_MODE", `mode ''${mode} is not served by the node wrapper`)) + "\n");
      process.exitCode = 2;
    }
  '';
}
