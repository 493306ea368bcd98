// Module hooks for emitting TypeScript entry files (see register.mjs).
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

let sdkUrl = "";
let ts = null;
let tsPath = "";

export function initialize(data) {
  sdkUrl = data.sdkUrl;
  tsPath = data.typescript;
}

function compiler() {
  if (ts === null) {
    if (!tsPath) throw new Error("E_EMIT_TYPESCRIPT: no TypeScript compiler ($MVM_TYPESCRIPT)");
    ts = createRequire(import.meta.url)(tsPath);
  }
  return ts;
}

export async function resolve(specifier, context, next) {
  if (specifier === "mvm-sdk") return { url: sdkUrl, shortCircuit: true };
  try {
    return await next(specifier, context);
  } catch (err) {
    if (specifier.startsWith(".") && !/\.[cm]?[jt]s$/.test(specifier)) {
      return next(`${specifier}.ts`, context);
    }
    throw err;
  }
}

export async function load(url, context, next) {
  if (/\.[cm]?ts$/.test(url)) {
    const text = await readFile(fileURLToPath(url), "utf8");
    const out = compiler().transpileModule(text, {
      fileName: fileURLToPath(url),
      compilerOptions: { module: 99 /* ESNext */, target: 9 /* ES2022 */ },
    });
    return { format: "module", source: out.outputText, shortCircuit: true };
  }
  return next(url, context);
}
