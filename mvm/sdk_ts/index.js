// The TypeScript/JavaScript SDK: the same declarations and the same canonical IR as
// the Python SDK (mvm/sdk.py). Declaring records; nothing runs. Under MVM_EMITTING=1
// the declared workload is written at process exit, RFC 8785 canonical, to
// $MVM_IR_OUT (stdout when unset). The omission rule mirrors engine/ir/model.py's
// OMIT_AT_DEFAULT: an app leaves out env/mounts/network/threat_tier/addons at their
// defaults, a function entrypoint leaves out args_schema/return_schema/concurrency/
// extra_imports/working_dir at theirs; everything else is always written.
import { writeFileSync, writeSync } from "node:fs";

export const SCHEMA_VERSION = "0.1";

const registry = { apps: [], volumes: [], id: null, extensions: {} };

export function emitting() {
  return process.env.MVM_EMITTING === "1";
}

function list(value, what) {
  if (typeof value === "string" || !Array.isArray(value)) {
    throw new TypeError(`${what} takes an array`);
  }
  return [...value];
}

export const source = {
  local(path = ".", opts = {}) {
    return {
      kind: "local_path",
      path,
      include: list(opts.include ?? ["**"], "include"),
      exclude: list(opts.exclude ?? [], "exclude"),
    };
  },
  nix(expr) {
    return { kind: "nix_derivation", expr };
  },
  oci(reference, digest) {
    return { kind: "oci_image", reference, digest: digest ?? digestOf(reference) };
  },
};

function digestOf(reference) {
  const at = reference.indexOf("@");
  if (at < 0) throw new Error(`E_OCI_DIGEST: ${reference} has no digest (name@sha256:<64 hex>)`);
  return reference.slice(at + 1);
}

export function nixPackages(packages) {
  return { kind: "nix_packages", packages: list(packages, "nixPackages") };
}

export function ociBase(reference, digest) {
  return { kind: "oci_base", reference, digest: digest ?? digestOf(reference) };
}

export const image = { nixPackages, ociBase, nix_packages: nixPackages, oci_base: ociBase };

export function resources({ vcpus = 1, memory_mb = 256, boot_timeout_secs = 30 } = {}) {
  return { vcpus, memory_mb, boot_timeout_secs };
}

export const deps = {
  none() {
    return { kind: "none" };
  },
  python({ lockfile = "uv.lock", tool = "uv" } = {}) {
    return { kind: "python", lockfile, tool };
  },
  node({ lockfile = "package-lock.json", tool = "npm" } = {}) {
    return { kind: "node", lockfile, tool };
  },
};

export function entrypointFunction(opts) {
  const ep = {
    kind: "function",
    language: opts.language,
    module: opts.module,
    function: opts.function,
    format: opts.format ?? "json",
    primary: opts.primary ?? false,
  };
  if (opts.args_schema != null) ep.args_schema = opts.args_schema;
  if (opts.return_schema != null) ep.return_schema = opts.return_schema;
  if (opts.concurrency != null) ep.concurrency = opts.concurrency;
  if (opts.extra_imports != null && opts.extra_imports.length) {
    ep.extra_imports = list(opts.extra_imports, "extra_imports");
  }
  if (opts.working_dir != null && opts.working_dir !== "/app") ep.working_dir = opts.working_dir;
  return ep;
}

export function entrypointCommand(command, { working_dir = "/app", env = {} } = {}) {
  return { kind: "command", command: list(command, "command"), working_dir, env };
}

export function volume(name, size_mb) {
  registry.volumes.push({ name, size_mb });
  return name;
}

export function workload({ id, extensions } = {}) {
  if (id != null) registry.id = id;
  if (extensions) Object.assign(registry.extensions, extensions);
}

export function app(opts) {
  const entrypoints = opts.entrypoints ?? (opts.entrypoint ? [opts.entrypoint] : []);
  const record = {
    name: opts.name,
    source: opts.source ?? source.local("."),
    image: opts.image,
    entrypoints,
    resources: opts.resources ?? resources(),
    dependencies: opts.dependencies,
  };
  if (opts.env && Object.keys(opts.env).length) record.env = opts.env;
  if (opts.mounts && opts.mounts.length) record.mounts = opts.mounts;
  if (opts.network != null) record.network = opts.network;
  if (opts.threat_tier != null && opts.threat_tier !== "untrusted") {
    record.threat_tier = opts.threat_tier;
  }
  if (opts.addons && opts.addons.length) record.addons = opts.addons;
  registry.apps.push(record);
  return (fn) => fn;
}

export function declaredWorkload() {
  if (!registry.apps.length) {
    throw new Error("E_EMIT_NO_APP: the entry file declared no app (call mvm.app({...})(fn))");
  }
  return {
    schema_version: SCHEMA_VERSION,
    id: registry.id ?? registry.apps[0].name,
    apps: registry.apps,
    volumes: registry.volumes,
    extensions: registry.extensions,
  };
}

// RFC 8785: keys sorted by UTF-16 code units, no whitespace, ES6 number and
// JSON.stringify string serialization (which is what JCS specifies).
export function canonicalize(value) {
  if (value === null || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError("non-finite number in IR");
    return JSON.stringify(value);
  }
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalize).join(",")}]`;
  if (typeof value === "object") {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalize(value[k])}`).join(",")}}`;
  }
  throw new TypeError(`${typeof value} is not a JSON value`);
}

export function emitJson() {
  return canonicalize(declaredWorkload());
}

let failed = false;
if (emitting()) {
  process.on("uncaughtException", (err) => {
    failed = true;
    process.stderr.write(`error[E_EMIT_FAILED]: ${err && err.message ? err.message : err}\n`);
    process.exit(1);
  });
  process.on("exit", (code) => {
    if (failed || code !== 0) return;
    let text;
    try {
      text = emitJson();
    } catch (err) {
      const msg = String(err && err.message ? err.message : err);
      const code = /^E_[A-Z_]+:/.test(msg) ? msg.split(":")[0] : "E_EMIT_FAILED";
      process.stderr.write(`error[${code}]: ${msg.replace(/^E_[A-Z_]+: /, "")}\n`);
      process.exitCode = 2;
      return;
    }
    const out = process.env.MVM_IR_OUT;
    if (out) writeFileSync(out, text);
    else writeSync(1, text + "\n");
  });
}
