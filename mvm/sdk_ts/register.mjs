// node --import <this> entry.ts: resolves "mvm-sdk" to this bundled SDK and
// transpiles .ts files with the TypeScript compiler named by $MVM_TYPESCRIPT.
import { register } from "node:module";

register(new URL("./hooks.mjs", import.meta.url), import.meta.url, {
  data: {
    sdkUrl: new URL("./index.js", import.meta.url).href,
    typescript: process.env.MVM_TYPESCRIPT ?? "",
  },
});
