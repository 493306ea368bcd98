// Types of the mvm-sdk declarations (the Workload IR's shape, schema 0.1).
export type Source =
  | { kind: "local_path"; path: string; include: string[]; exclude: string[] }
  | { kind: "nix_derivation"; expr: string }
  | { kind: "oci_image"; reference: string; digest: string };
export type Image =
  | { kind: "nix_packages"; packages: string[] }
  | { kind: "oci_base"; reference: string; digest: string };
export type Dependencies =
  | { kind: "none" }
  | { kind: "python"; lockfile: string; tool: "uv" | "pip-tools" }
  | { kind: "node"; lockfile: string; tool: "pnpm" | "npm" | "yarn" };
export interface Resources { vcpus: number; memory_mb: number; boot_timeout_secs: number }
export interface FunctionOptions {
  language: string;
  module: string;
  function: string;
  format?: "json" | "msgpack";
  primary?: boolean;
  args_schema?: unknown;
  return_schema?: unknown;
  concurrency?: unknown;
  extra_imports?: string[];
  working_dir?: string;
}
export type Entrypoint =
  | ({ kind: "function" } & FunctionOptions)
  | { kind: "command"; command: string[]; working_dir: string; env: Record<string, string> };
export interface AppOptions {
  name: string;
  source?: Source;
  image: Image;
  resources?: Resources;
  dependencies: Dependencies;
  entrypoint?: Entrypoint;
  entrypoints?: Entrypoint[];
  env?: Record<string, string>;
  mounts?: { volume: string; path: string; read_only?: boolean }[];
  network?: { mode?: "none" | "nat"; ports?: number[] } | null;
  threat_tier?: "untrusted" | "trusted";
  addons?: string[];
}
export const SCHEMA_VERSION: "0.1";
export function emitting(): boolean;
export const source: {
  local(path?: string, opts?: { include?: string[]; exclude?: string[] }): Source;
  nix(expr: string): Source;
  oci(reference: string, digest?: string): Source;
};
export function nixPackages(packages: string[]): Image;
export function ociBase(reference: string, digest?: string): Image;
export const image: {
  nixPackages: typeof nixPackages;
  ociBase: typeof ociBase;
  nix_packages: typeof nixPackages;
  oci_base: typeof ociBase;
};
export function resources(r?: Partial<Resources>): Resources;
export const deps: {
  none(): Dependencies;
  python(o?: { lockfile?: string; tool?: "uv" | "pip-tools" }): Dependencies;
  node(o?: { lockfile?: string; tool?: "pnpm" | "npm" | "yarn" }): Dependencies;
};
export function entrypointFunction(opts: FunctionOptions): Entrypoint;
export function entrypointCommand(
  command: string[],
  opts?: { working_dir?: string; env?: Record<string, string> },
): Entrypoint;
export function volume(name: string, size_mb: number): string;
export function workload(o?: { id?: string; extensions?: Record<string, unknown> }): void;
export function app(opts: AppOptions): <F>(fn: F) => F;
export function declaredWorkload(): unknown;
export function canonicalize(value: unknown): string;
export function emitJson(): string;
