"""The registry of every error code mvm uses: code -> class, meaning, default hint.

Codes are API (tests and scripts match on them), so they live in one place:

* ``cls`` names the :class:`~mvm.engine.base.errors.MvmError` subclass the host raises
  with the code. Codes made outside Python (the guest agent in C, the function
  wrappers, the Nix library's ``throw "E_CODE: fn: message"``) name the class the
  host relays them as (AgentError, FunctionError, ConfigError).
* ``meaning`` is one line: what happened.
* ``hint`` is what to do; ``MvmError.one_line()`` prints it when the raise site
  gave no hint of its own, so every coded line a user sees carries a hint.
* ``also`` lists other classes a code is raised as today (kept for compatibility;
  a new code should have exactly one class).

To add a code: add one ``_c(...)`` line below (alphabetical within its group),
then raise it (``SomeError("...", code="E_NEW")``). tests/unit/test_error_codes.py
scans the installed package (Python, .nix, .c, .js) and fails on a code literal
that is not registered here, on an entry nothing uses any more, and on a raise
site whose class differs from the registered one. Never rename or reuse a code.

Classes are named, not imported, so this module imports nothing of mvm and every
module (errors.py included) can use it without an import cycle.
"""

from __future__ import annotations

from typing import NamedTuple


class CodeInfo(NamedTuple):
    code: str
    cls: str
    meaning: str
    hint: str
    also: tuple[str, ...] = ()


_CHECK = "fix the value the message names"
_SETUP = "run ./scripts/setup to install what mvm needs"
_REPORT = "this is a bug in mvm or its guest; report it with the message"
_LOGS = "see the VM's console log: mvmctl logs NAME"
_REBUILD = "rebuild the image with this mvm (mvmctl build)"
_FUNC = "fix the function or its arguments; the message is the guest's"

_ENTRIES: list[CodeInfo] = []


def _c(code: str, cls: str, meaning: str, hint: str, *also: str) -> None:
    _ENTRIES.append(CodeInfo(code, cls, meaning, hint, also))


# A table: one entry per code, kept compact (ruff format would spread each over 6 lines).
# fmt: off

# --- base classes' own codes (engine/base/errors.py)
_c("E_MVM", "MvmError", "an mvm error without a more specific code", _REPORT)
_c("E_CONFIG", "ConfigError", "bad user input (spec, mvm.toml, IR, CLI arguments)", _CHECK)
_c("E_STATE", "StateError", "the state store is unusable", "check MVM_HOME and its state.db")
_c("E_NOT_FOUND", "NotFoundError", "a named VM, snapshot, image or build does not exist",
   "list what exists with: mvmctl ls")
_c("E_CONFLICT", "ConflictError", "a name is taken, a port is in use or a VM is in the wrong "
   "state", "pick another name or port, or stop what holds it")
_c("E_BACKEND", "BackendError", "the hypervisor failed", _LOGS)
_c("E_BACKEND_UNAVAILABLE", "BackendUnavailable", "the backend cannot run on this host",
   "run mvmctl doctor to see what this host lacks")
_c("E_BUILD", "BuildError", "building a kernel, agent or image failed",
   "read the build output in the message", "MvmError")
_c("E_AGENT", "AgentError", "the guest agent refused a request or broke the protocol", _LOGS)
_c("E_SEALED", "AccessDenied", "the image is sealed: exec, console and files are refused",
   "build the image with dev = true")
_c("E_ACTOR_FAILED", "ActorFailed", "a supervised child escalated its failure to its parent",
   "see the log for the child's last error")
_c("E_TIMEOUT", "RequestTimeout", "a request to an actor or the guest got no reply in time",
   _LOGS)
_c("E_SECURITY", "SecurityError", "a plan signature, nonce or audit chain check failed",
   "do not trust this plan or log; investigate")
_c("E_IR", "IrError", "the workload IR is invalid", "fix the IR value at the JSON path shown")
_c("E_PLAN_SIGNATURE", "PlanSignatureError", "an ExecutionPlan is unsigned, signed by another "
   "key or altered", "sign the plan again with this host's key")
_c("E_PLAN_EXPIRED", "PlanExpired", "an ExecutionPlan's validity window has ended",
   "sign a fresh plan")
_c("E_PLAN_NOT_YET_VALID", "PlanNotYetValid", "an ExecutionPlan's validity window has not "
   "started", "check the host clock, or wait for the plan's start time")
_c("E_NONCE_REPLAY", "NonceReplay", "an ExecutionPlan's nonce was already used (replay)",
   "sign a fresh plan; a plan runs once")
_c("E_AUDIT_TAMPERED", "AuditTampered", "the hash-chained audit log was altered",
   "the audit log can no longer be trusted; keep a copy and investigate")
_c("E_KEY_PERMISSIONS", "KeyPermissions", "the host signing key is readable by others or not "
   "ours", "chmod 600 the key file and make it owned by this user")
_c("E_RESTART_BUDGET", "RestartBudgetExhausted", "a supervised child failed too often",
   "see the log for the child's repeated error")
_c("E_ACTOR_STOPPED", "ActorStopped", "a message was sent to an actor that has ended",
   "see the log for why the actor ended", "MvmError")
_c("E_MESSAGE", "MessageError", "a message could not cross the wire", _REPORT)
_c("E_BUILD_PHASE", "BuildPhaseError", "a remote or delegated build failed in one phase",
   "the phase in the message says where to look")

# --- actors and supervision (engine/runtime/actor.py, engine/runtime/supervisor.py, actors/)
_c("E_ACTOR_INBOX", "ConfigError", "an actor's inbox size is negative", "give inbox_size >= 0")
_c("E_ACTOR_NAME", "ConfigError", "an actor was given an empty name", "name the actor")
_c("E_ACTOR_NAME_TAKEN", "ConflictError", "a supervisor already runs an actor of that name",
   "give each child a distinct name")
_c("E_SUPERVISOR_CLOSED", "MvmError", "a child was started on a supervisor that has stopped",
   "start children while the supervisor runs")
_c("E_UNHEALTHY", "ActorFailed", "a service's health check failed",
   "the VM's supervisor restarts it per its policy")
_c("E_RESTART_POLICY", "ConfigError", "a restart policy is invalid", _CHECK)
_c("E_EVENTS_MAXSIZE", "ConfigError", "an event subscription has no room for an event",
   "give max_size >= 1")
_c("E_EVENTS_SINCE", "ConfigError", "mvmctl events --since is not a time",
   "give a duration (30s, 10m, 2h, 1d), seconds since the epoch or an ISO date")
_c("E_ALREADY_ADOPTED", "ConflictError", "another engine already supervises the VM",
   "use the engine that adopted it, or stop that engine")
_c("E_DETACH", "AgentError", "this engine cannot detach the VM",
   "start the VM detached (mvmctl run) to detach from it later")

# --- guest agent protocol (backends/guest/*, agent C sources, bench agent)
_c("E_AGENT_BUILD", "BuildError", "compiling the guest agent failed",
   "read the compiler output in the message")
_c("E_AGENT_GONE", "AgentError", "the guest agent connection closed or broke",
   "check mvmctl status NAME; the VM may have stopped", "NotFoundError", "RequestTimeout")
_c("E_AGENT_MISSING", "BuildError", "the guest agent binary is missing", _SETUP)
_c("E_AGENT_RESTARTED", "AgentError", "the guest agent restarted and forgot the request",
   "retry the request")
_c("E_AGENT_TOOLCHAIN", "BuildError", "no usable C compiler for the guest agent", _SETUP)
_c("E_BOOT_TIMEOUT", "RequestTimeout", "the guest agent sent no hello in time", _LOGS)
_c("E_CONNECT", "AgentError", "the guest could not connect to the requested port",
   "check that the guest service listens on that port")
_c("E_CTL", "AgentError", "the guest init's control FIFO is unavailable", _REBUILD)
_c("E_EXEC", "AgentError", "the guest could not start the command",
   "check the program exists in the image")
_c("E_EXEC_ARGS", "AgentError", "an exec or console request had bad fields", _REPORT)
_c("E_CP", "AgentError", "the guest's tar failed while copying files",
   "check the guest path and its permissions")
_c("E_EXEC_USER", "AccessDenied", "exec -u asked for another user while exec does not run "
   "as root", "build the image with a root entrypoint for -u, or drop -u")
_c("E_EXEC_SIGNAL", "AgentError", "a signal number outside 1..64 was sent", "send a signal 1..64")
_c("E_EXEC_TIMEOUT", "RequestTimeout", "the command did not finish in time",
   "raise --timeout or make the command finish")
_c("E_IDENTITY", "AgentError", "the guest init did not apply the VM identity in time", _LOGS)
_c("E_IDENTITY_ARGS", "AgentError", "an identity request had bad fields", _REPORT)
_c("E_LOGS_ARGS", "AgentError", "a logs request had bad fields", "name a service of the image")
_c("E_PROTO", "ProtocolError", "the peer broke the framing of the agent protocol", _REBUILD)
_c("E_PROTO_ID", "AgentError", "a request id was 0 or already in use", _REPORT)
_c("E_PROTO_UNKNOWN", "AgentError", "the guest agent does not know this request type", _REBUILD)
_c("E_PROTO_VERSION", "AgentError", "the guest agent speaks another protocol version", _REBUILD)
_c("E_RUN_ARGS", "AgentError", "a run request named a mode other than oneshot or longrunning",
   _REPORT)
_c("E_RUN_CONFIG", "AgentError", "the image's function entrypoint config is unusable", _REBUILD)
_c("E_RUN_NO_ENTRYPOINT", "AgentError", "the image has no function entrypoint",
   "build the image from a function workload (IR with a function entrypoint)")
_c("E_SERVICE_ARGS", "AgentError", "a service request had bad fields",
   "name a service of the image; action restart or kill")
_c("E_SHUTDOWN_ARGS", "AgentError", "a shutdown request had bad fields", _REPORT)
_c("E_VSOCK", "BackendError", "an AF_VSOCK socket cannot be created",
   "load the vhost_vsock module or use the virtio-serial channel")
_c("E_VSOCK_HANDSHAKE", "HandshakeError", "the VMM's hybrid vsock CONNECT handshake failed",
   _LOGS)

# --- function invocation and the guest wrappers (engine/invoke*.py, wrapper.py, node.nix)
_c("E_FUNCTION_ARGS", "ConfigError", "the arguments do not fit the function",
   "see the IR's args_schema for this function", "FunctionError")
_c("E_FUNCTION_FAILED", "FunctionError", "the function raised an error", _FUNC)
_c("E_FUNCTION_LOAD", "FunctionError", "the wrapper could not load the function",
   "check the entrypoint's module and function names")
_c("E_FUNCTION_RETURN", "FunctionReturnError", "the function returned a value its "
   "return_schema refuses", "fix the function or its IR return_schema")
_c("E_INPUT_DEPTH", "FunctionError", "the input JSON is nested too deeply",
   "flatten the arguments", "ConfigError")
_c("E_INPUT_DUPLICATE_KEY", "FunctionError", "the input JSON has a duplicate key",
   "give each key once", "ConfigError")
_c("E_INPUT_JSON", "FunctionError", "the input is not valid UTF-8 JSON",
   "pass valid JSON", "ConfigError")
_c("E_INPUT_NONFINITE", "FunctionError", "the input holds NaN or Infinity",
   "pass finite numbers only", "ConfigError")
_c("E_INPUT_SHAPE", "FunctionError", "the input is not [args, kwargs]",
   "pass a JSON list and an object: [args, kwargs]", "ConfigError")
_c("E_INPUT_TOO_LARGE", "FunctionError", "the input is over the wrapper's size limit",
   "pass a smaller input; ship data in a volume", "ConfigError")
_c("E_INVOKE_ARGS", "ConfigError", "the invoke arguments are malformed", _CHECK)
_c("E_INVOKE_NO_REPLY", "AgentError", "the function wrapper exited without a reply", _LOGS)
_c("E_INVOKE_POOL", "ConfigError", "the warm pool size is out of range", "give 1..64")
_c("E_INVOKE_REPLY", "AgentError", "the guest sent a malformed reply", _REBUILD)
_c("E_INVOKE_TIMEOUT", "RequestTimeout", "the function did not answer in time",
   "raise the timeout or make the function faster")
_c("E_RESULT_ENCODE", "FunctionError", "the function's result is not JSON-encodable",
   "return JSON values only")
_c("E_RESULT_TOO_LARGE", "FunctionError", "the function's result is over the size limit",
   "return less; write big results to a volume")
_c("E_WRAPPER_CONFIG", "FunctionError", "the wrapper's function config is unusable", _REBUILD)
_c("E_WRAPPER_MODE", "FunctionError", "the wrapper does not serve this mode", _REBUILD)
_c("E_WRAPPER_REUSED", "FunctionError", "a oneshot wrapper was asked to dispatch twice", _REPORT)

# --- builds (engine/builders/offline_image.py, engine/builders/, backends/image_*.py, kernel)
_c("E_BUILD_ARTIFACTS", "BuildPhaseError", "the build produced no image artifacts",
   "the flake package must be an mkGuest image")
_c("E_BUILDER_PACKAGES", "BuildPhaseError", "the builder VM needs Debian packages not installed",
   "run ./scripts/setup (it installs the builder VM's Debian packages)")
_c("E_BUILDER_IMAGE", "BuildPhaseError", "the builder image just assembled does not check out",
   "remove ~/.cache/mvm/builder-vm and build again; mvmctl dev cache inspect says why")
_c("E_BUILDER_EXEC", "BuildPhaseError", "a staging command failed inside the builder VM",
   "mvmctl logs mvm-builder --all shows the builder VM's console")
_c("E_BUILD_ATTR", "BuildPhaseError", "the flake does not provide the attribute to build",
   "check packages.<system>.<profile> in flake.nix and --profile")
_c("E_BUILD_SYSTEM", "BuildPhaseError", "the flake's image is for another system than the builder",
   'set system = "x86_64-linux" in flake.nix')
_c("E_BUILD_EVAL", "BuildPhaseError", "nix could not evaluate the flake in the builder VM",
   "read nix's error in the message; nix flake check shows it too")
_c("E_BUILD_FETCH", "BuildPhaseError", "fetching the built image back failed",
   "check the builder's disk and the nix build output")
_c("E_BUILD_MODE", "BuildError", "the requested builder is unavailable here",
   "run mvmctl doctor, or choose another builder")
_c("E_BUILD_NIX_FAILED", "BuildPhaseError", "nix build failed", "read nix's error in the "
   "message; it is the flake's")
_c("E_BUILD_NO_BUILDER", "BuildError", "no builder can build this flake here",
   "configure a Nix builder (host Nix with a store, or MVM_BUILDER_SSH)")
_c("E_BUILD_POOL", "ConfigError", "the builder pool size is below 1", "give a size >= 1")
_c("E_BUILD_PROTOCOL", "BuildPhaseError", "the builder VM broke the build protocol", _REPORT)
_c("E_BUILD_REMOTE_NIX", "BuildPhaseError", "the remote builder has no usable nix",
   "install Nix on the builder host")
_c("E_BUILD_SOURCE", "BuildPhaseError", "there is no flake source to build",
   "run it in the folder holding flake.nix, or pass --flake PATH", "ConfigError")
_c("E_BUILD_SSH_AUTH", "BuildPhaseError", "the SSH builder refused our key",
   "authorise this host's key on the builder")
_c("E_BUILD_SSH_CONNECT", "BuildPhaseError", "the SSH builder is unreachable",
   "check MVM_BUILDER_SSH's host and port")
_c("E_BUILD_SSH_DISCONNECT", "BuildPhaseError", "the SSH builder dropped the connection",
   "retry; check the builder host")
_c("E_BUILD_SSH_HOSTKEY", "BuildPhaseError", "the SSH builder's host key is unknown or changed",
   "add the builder to known_hosts after checking its key")
_c("E_BUILD_SSH_TARGET", "ConfigError", "the builder address is not [user@]host[:port]",
   "for example MVM_BUILDER_SSH=nix@builder:22")
_c("E_BUILD_STAGE", "BuildPhaseError", "copying the sources to the builder failed",
   "check the builder's disk and permissions")
_c("E_BUILD_VSOCK_CONNECT", "BuildPhaseError", "the builder VM is unreachable",
   "start it: mvmctl persistent-builder start")
_c("E_BUILD_VSOCK_DISCONNECT", "BuildPhaseError", "the builder VM dropped the connection",
   "retry; restart the builder VM")
_c("E_BUILD_VSOCK_TARGET", "ConfigError", "the builder VM address is not vsock:CID[:PORT] or "
   "unix:PATH", "for example vsock:3:5000")
_c("E_BUILD_VSOCK_UNAVAILABLE", "BuildPhaseError", "this host cannot reach a builder VM",
   "load vhost_vsock, or use another builder")
_c("E_BUILDER_NOT_RUNNING", "NotFoundError", "no persistent builder is running",
   "mvmctl persistent-builder start")
_c("E_BUILDER_SIZE", "ConfigError", "the builder size is below 1", "give --size >= 1")
_c("E_BUILDER_START", "MvmError", "the persistent builder exited at once",
   "see the builder's log named in the message")
_c("E_BUSYBOX", "BuildError", "the static busybox is missing or unusable",
   "apt-get install busybox-static")
_c("E_E2FSPROGS", "BuildError", "e2fsprogs tools are missing", "apt-get install e2fsprogs")
_c("E_IMAGE_FS", "BuildError", "writing the image's filesystem failed",
   "read the tool's output in the message")
_c("E_INIT_MISSING", "BuildError", "the guest init script is missing", _SETUP, "ConfigError")
_c("E_KERNEL_BUILD", "BuildError", "a kernel build step failed", "see the full build log")
_c("E_KERNEL_CONFIG", "BuildError", "the kernel config lacks a required option",
   "fix the option's dependencies or name in the config fragment")
_c("E_KERNEL_JOBS", "ConfigError", "MVM_KERNEL_JOBS is not a positive whole number",
   "set MVM_KERNEL_JOBS to the number of parallel kernel build jobs, or unset it")
_c("E_KERNEL_MISSING", "ConfigError", "no guest kernel (vmlinux) was found",
   "build one: mvmctl kernel build, or point MVM_KERNEL at a vmlinux")
_c("E_KERNEL_SOURCE", "BuildError", "the kernel source is unavailable",
   "run ./scripts/setup (linux-source), or set MVM_KERNEL to a vmlinux")
_c("E_KERNEL_TOOLCHAIN", "BuildError", "a kernel build tool is missing", _SETUP)
_c("E_PYTHON_RUNTIME", "BuildError", "the host python cannot be copied into the image",
   "apt-get install python3")
_c("E_VOLUME_BUILD", "BuildError", "building a volume image failed",
   "install e2fsprogs: run ./scripts/setup")

# --- Nix (backends/nix_meta.py, nix/lib/*.nix, nix/stub-pkgs)
_c("E_FLAKE_ATTR", "ConfigError", "--attr names no package of the flake",
   "use packages.<system>.<name> or a package name")
_c("E_FLAKE_OFFLINE", "ConfigError", "this flake cannot be built without Nix",
   "configure a Nix builder (host Nix with a store, or MVM_BUILDER_SSH)")
_c("E_FLAKE_REF", "ConfigError", "the flake ref needs the network or names no path",
   "check the flake out locally and pass --flake PATH")
_c("E_FLAKE_SYSTEM", "ConfigError", "the image is for another system than this host",
   "use the packages.<system> of this host, or a builder for that system")
_c("E_NIX_EVAL", "BuildError", "nix evaluation failed", "read nix's error in the message")
_c("E_NIX_MISSING", "BuildPhaseError", "nix is not installed", "apt-get install nix-bin, or "
   "install Nix", "BuildError")
_c("E_NIX_PATH", "ConfigError", "the Nix library path cannot be a Nix path literal",
   "set MVM_NIX_DIR to a plain path")
_c("E_NIX_TIMEOUT", "BuildError", "nix evaluation took too long",
   "simplify the expression or retry")
_c("E_NIXPKGS_UNAVAILABLE", "ConfigError", "a package needs nixpkgs, which this host lacks",
   "use a package of the offline set (the message lists them) or a busybox applet, or "
   "build where nixpkgs can be fetched (MVM_BUILDER_SSH, --builder host with a store)")
_c("E_OFFLINE_PKG_MISSING", "BuildError",
   "a Debian package the offline package set is made from is not installed", _SETUP)

# --- image specs, mkGuest arguments and images (engine/images/imagespec.py, nix/lib/args.nix)
_c("E_DEV_SEALED", "AccessDenied", "dev needs an accessible image and this one is sealed",
   "set entrypoint.shell (or dev = true) in the dev output's mkGuest")
_c("E_IMAGE_AMBIGUOUS", "ConflictError", "an image key prefix matches more than one image",
   "give more characters of the key (mvmctl images) or the image's name")
_c("E_IMAGE_IN_USE", "ConflictError", "a VM row (running or stopped) still uses the image",
   "remove the VM first (mvmctl rm NAME) or force it: mvmctl rmi -f")
_c("E_IMAGE_META", "ConfigError", "the image's mvm-meta.json is missing or not JSON",
   _REBUILD)
_c("E_IMAGE_MISSING", "NotFoundError", "the image directory does not exist",
   "build it first: mvmctl build")
_c("E_IMAGE_REF", "ConfigError", "the image reference names nothing known",
   "give demo, demo-dev, a spec .json file or an image directory")
_c("E_IMAGE_UNKNOWN", "NotFoundError", "no cached image has that name or key",
   "list the built images: mvmctl images")
_c("E_ROOTFS_MISSING", "ConfigError", "the image has no root filesystem", _REBUILD)
_c("E_VERITY", "SecurityError", "the guest read a rootfs block that fails dm-verity (the "
   "sealed image was altered after its build)", "do not run this image; rebuild it: mvmctl build")
_c("E_VERITY_FORMAT", "BuildError", "veritysetup could not add the sealed rootfs's hash tree",
   "install cryptsetup-bin (./scripts/setup) and rebuild")
_c("E_VERITY_MISMATCH", "SecurityError", "the image's recorded dm-verity root hash differs "
   "from the signed plan's", "the image changed after admission; rebuild it and launch again")
_c("E_SPEC_COMMAND", "ConfigError", "a command is empty or not a string or list of strings",
   "omit it or give argv")
_c("E_SPEC_ENTRYPOINT", "ConfigError", "the entrypoint is invalid or not in the image",
   "add the program to packages or extra_files")
_c("E_SPEC_ENV", "ConfigError", "a service env entry is invalid",
   "use shell names with one-line values")
_c("E_SPEC_HEALTH", "ConfigError", "a health check is invalid",
   "give healthCmd and positive interval/timeout for a defined service")
_c("E_SPEC_HYPERVISOR", "ConfigError", "the spec names an unknown hypervisor",
   "use qemu, firecracker or cloud-hypervisor")
_c("E_SPEC_INVALID", "ConfigError", "the spec is not a JSON object / attribute set or has "
   "unknown keys", _CHECK)
_c("E_SPEC_MEMORY", "ConfigError", "memory_mib is out of range", "give memory_mib 64..65536")
_c("E_SPEC_MISSING", "ConfigError", "the spec file does not exist", "check the path")
_c("E_SPEC_MODE", "ConfigError", "an extra file's mode is invalid", "give a mode 0..0777")
_c("E_SPEC_NAME", "ConfigError", "the image name is missing or invalid",
   "use 1-63 lowercase letters, digits and '-'")
_c("E_SPEC_PACKAGE", "ConfigError", "a package is not found or not usable in the image",
   "name a busybox applet or a Nix package in the flake")
_c("E_SPEC_PATH", "ConfigError", "a guest path is not absolute, has '..' or is reserved",
   "use a plain absolute guest path")
_c("E_SPEC_RESTART", "ConfigError", "a service restart policy is invalid",
   "use always, on-failure or never")
_c("E_SPEC_SERVICE", "ConfigError", "a service is invalid", _CHECK)
_c("E_SPEC_SHELL", "ConfigError", "the entrypoint shell needs a static shell on this host",
   "run ./scripts/setup (apt-get install bash-static)")
_c("E_SPEC_SECCOMP", "ConfigError", "the spec names an unknown seccomp tier",
   "use seccomp unrestricted, standard (the default) or strict")
_c("E_SPEC_UID", "ConfigError", "a uid is out of range or clashes with the agent's",
   "the workload must not run as the agent; give uids 0..65535")
_c("E_SPEC_VCPUS", "ConfigError", "vcpus is out of range", "give vcpus 1..64")

# --- workload IR and emitting it (engine/ir/, mvm/emit.py, mvm/sdk*.py, mvm/sdk_ts)
_c("E_EMIT_ENTRY", "ConfigError", "the entry file does not exist", "check the path")
_c("E_EMIT_FAILED", "ConfigError", "running the entry file to emit the IR failed",
   "guard slow side effects with `if not mvm.emitting():`")
_c("E_EMIT_NODE_MISSING", "ConfigError", "a TypeScript/JavaScript entry needs node",
   "install Node.js 20+ (apt-get install nodejs)")
_c("E_EMIT_NO_APP", "ConfigError", "the entry file declared no app",
   "decorate a function with @mvm.app(...)")
_c("E_EMIT_TYPESCRIPT", "ConfigError", "the TypeScript loader found no compiler",
   "run ./scripts/setup (npm install --prefix .venv/node typescript)")
_c("E_EMIT_TYPESCRIPT_MISSING", "ConfigError", "a .ts entry needs the TypeScript compiler",
   "run ./scripts/setup (npm install --prefix .venv/node typescript)")
_c("E_IR_APPS", "ConfigError", "the builder needs exactly one app in the IR",
   "split the workload into one IR per app")
_c("E_IR_CONCURRENCY", "ConfigError", "the IR's concurrency block is invalid",
   'give {"warm": 0..64}')
_c("E_IR_ENTRYPOINT", "ConfigError", "the app has not exactly one primary function",
   "mark exactly one function entrypoint primary")
_c("E_IR_ENV", "ConfigError", "an app env value holds a newline or '''",
   "use one-line env values")
_c("E_IR_FILE", "ConfigError", "the IR file cannot be read", "check the path")
_c("E_IR_FORMAT", "ConfigError", "the function's wire format is not supported",
   'use format="json"')
_c("E_IR_IMAGE", "ConfigError", "the app's image kind is not supported here",
   "use a nix_packages image")
_c("E_IR_JSON", "IrError", "the IR is not valid JSON", "emit the IR again with the SDK")
_c("E_IR_LANGUAGE", "ConfigError", "the function's language is not supported by this builder",
   "build with Nix (nix/lib) for other languages")
_c("E_IR_LEGACY_FORMAT", "IrError", "the IR is in a legacy shape this field cannot take",
   "emit the IR again with this mvm's SDK")
_c("E_IR_MISSING", "ConfigError", "the IR file does not exist", "check the path")
_c("E_IR_MODULE", "IrError", "a function entrypoint names the emitting entry file as its "
   "module", 'pass module= (the file under the source dir, e.g. module="app")')
_c("E_IR_MISSING_FIELD", "IrError", "a required IR field is missing",
   "add the field at the JSON path shown")
_c("E_IR_SCHEMA_VERSION", "IrError", "the IR's schema version is not supported",
   "re-emit the IR with this mvm's SDK, or upgrade mvm")
_c("E_IR_SOURCE", "ConfigError", "the app source is missing or too big",
   "point the app source at a small directory")
_c("E_IR_TOO_LARGE", "IrError", "the IR document is over the size limit",
   "an IR declares a workload; ship data in the source tree or a volume")
_c("E_IR_TYPE", "IrError", "an IR value has the wrong JSON type",
   "fix the value at the JSON path shown")
_c("E_IR_UNKNOWN_FIELD", "IrError", "the IR has a field this schema does not know",
   "remove the field, or upgrade mvm")
_c("E_IR_VALUE", "IrError", "an IR value is out of range or invalid",
   "fix the value at the JSON path shown")
_c("E_OCI_DIGEST", "IrError", "an OCI image reference is not pinned by digest",
   "pin it with a digest 'sha256:<64 hex>'", "ConfigError")
_c("E_SECRET_FIELD", "IrError", "the IR holds a value that looks like a secret",
   "pass secrets at run time, not in the IR")
_c("E_UNPINNED_DEPS", "IrError", "the app's dependencies are not pinned by a lockfile",
   "add a lockfile for the app's dependencies")
_c("E_UNSUPPORTED_LANGUAGE", "IrError", "the IR names an unsupported language",
   "use one of the languages the SDK supports")

# --- mvm.toml and projects (engine/request/mvmtoml.py, engine/builders/project.py)
_c("E_PROFILE", "ConfigError", "the profile is not a flake package name",
   "a name like default or dev (packages.<system>.<profile>)")
_c("E_TOML_MISSING", "ConfigError", "mvm.toml does not exist", "run in the project folder")
_c("E_TOML_PATH", "ConfigError", "a path in mvm.toml does not exist or has no flake.nix",
   "paths are relative to mvm.toml")
_c("E_TOML_RANGE", "ConfigError", "an mvm.toml value is out of range", _CHECK)
_c("E_TOML_SYNTAX", "ConfigError", "mvm.toml is not valid TOML", "fix the line shown")
_c("E_TOML_TYPE", "ConfigError", "an mvm.toml value has the wrong type", _CHECK)
_c("E_TOML_UNKNOWN_KEY", "ConfigError", "mvm.toml has a key mvm does not know",
   "remove it or check its spelling")
_c("E_TOML_VALUE", "ConfigError", "an mvm.toml value is invalid", _CHECK)
_c("E_WORKSPACE", "ConfigError", "the workspace folder does not exist", "check the path")

# --- VMs, CLI arguments and lifecycle (engine/request/vmrequest.py, engine/engine.py, mvm/cli)
_c("E_ACCEL", "ConfigError", "MVM_ACCEL is not auto, kvm or tcg (engine/base/settings.py)",
   "set MVM_ACCEL to auto, kvm or tcg, or unset it")
_c("E_BACKEND_NAME", "ConfigError", "the backend name is unknown", "run mvmctl doctor for "
   "the backends")
_c("E_BACKEND_PLUGIN", "ConfigError", "an MVM_BACKEND_PLUGINS entry is malformed",
   "write NAME=module:factory")
_c("E_CLONE_COUNT", "ConfigError", "--count is below 1", "give --count >= 1")
_c("E_CONSOLE_NO_VM", "NotFoundError", "no VM was named and no dev VM runs",
   "mvmctl dev up, or mvmctl console VM")
_c("E_EXEC_ARGV", "ConfigError", "no command was given", "mvmctl exec NAME -- CMD")
_c("E_CP_ARGS", "ConfigError", "cp needs exactly one VM:PATH side",
   "mvmctl cp FILE VM:/path, or mvmctl cp VM:/path FILE")
_c("E_CP_DEST", "ConfigError", "the cp destination cannot take the source",
   "name an existing folder or a new path whose folder exists")
_c("E_CP_SOURCE", "NotFoundError", "the cp source does not exist", "check the path")
_c("E_ENV_FILE", "ConfigError", "an --env-file cannot be read", "give a readable UTF-8 file")
_c("E_ENV_RESERVED", "ConfigError", "a runtime variable uses the reserved MVM_ prefix",
   "pick a name that does not start with MVM_")
_c("E_ENV_SPEC", "ConfigError", "a -e / --env-file line is not KEY=VALUE", "write KEY=VALUE")
_c("E_ENV_TOO_LARGE", "ConfigError", "the runtime environment does not fit the kernel "
   "command line", "put larger configuration in a folder mounted with -v DIR:/mnt/config")
_c("E_EXEC_USER_SPEC", "ConfigError", "exec -u names no usable user",
   "give -u NAME, -u UID or -u UID:GID")
_c("E_EXEC_USER_UNKNOWN", "NotFoundError", "exec -u names a user or group the guest lacks",
   "give a uid, or a user the image has")
_c("E_HEALTH_ACTION", "ConfigError", "the health action is unknown",
   "use one of: none, restart-service, restart-vm")
_c("E_HOST_TSC", "ConfigError", "the host TSC frequency is unknown",
   "set MVM_ACCEL=kvm on a KVM host, or check /proc/cpuinfo")
_c("E_HYPERVISOR_NAME", "ConfigError", "the hypervisor name is unknown",
   "use qemu, firecracker or cloud-hypervisor")
_c("E_HYPERVISOR_UNAVAILABLE", "ConfigError", "the chosen hypervisor cannot run here",
   "run mvmctl doctor, or use --hypervisor qemu")
_c("E_LOGS_SINCE", "ConfigError", "logs --since is neither a duration nor a time",
   "use 30s, 5m, 2h, 1d, 2026-01-02T03:04:05Z or Unix seconds")
_c("E_LOGS_SERVICE", "ConfigError", "logs --service names no service of the VM's image",
   "name one of the services it lists")
_c("E_LOG_LEVEL", "ConfigError", "the log level is unknown",
   "use one of: debug, info, warning, error, critical")
_c("E_MEMORY", "ConfigError", "the memory size is out of range", "give memory_mib in range")
_c("E_VM_TTL", "ConfigError", "the VM's lifetime (ttl_s, --ttl) is not a positive duration",
   "give a duration such as 30s, 10m, 2h, 1d, or seconds")
_c("E_NAME_TAKEN", "ConflictError", "a VM of that name already exists",
   "pick another --name or run: mvmctl down NAME")
_c("E_PORT_DUPLICATE", "ConflictError", "a host address and port is listed twice",
   "give each -p HOST_PORT only once")
_c("E_PORT_IN_USE", "ConflictError", "the host port is in use",
   "pick another host port with -p HOST:GUEST or stop what uses it")
_c("E_PORT_SPEC", "ConfigError", "a port mapping is invalid", "for example -p 8080:80")
_c("E_RUN_COMMAND", "ConfigError", "`-- CMD` was given for an image not built from a spec",
   "give demo, demo-dev or a SPEC.json, or put the command in the spec")
_c("E_RUN_RM_DETACHED", "ConfigError", "--rm was given without --attached",
   "add --attached, or remove the VM later with mvmctl rm NAME")
_c("E_SHIM_FAILED", "BackendError", "the VM's supervisor exited before the VM was ready",
   _LOGS)
_c("E_SIGNAL", "ConfigError", "the signal name or number is unknown",
   "use a name or number: KILL, TERM, 9")
_c("E_VCPUS", "ConfigError", "the vCPU count is out of range", "give vcpus in range")
_c("E_VM_NAME", "ConfigError", "the VM name is missing or invalid", "use 1-63 letters, "
   "digits, '.', '_' or '-', starting with a letter or digit")
_c("E_VM_NOT_FOUND", "NotFoundError", "no VM of that name exists", "see mvmctl ls")
_c("E_VM_NOT_RUNNING", "ConflictError", "the VM is not running",
   "start it again, or read its log: mvmctl logs NAME")
_c("E_VM_REMOTE", "ConflictError", "another process supervises the VM: its agent link is there",
   "use the handle's exec, wait and stop (they go through the owner)")
_c("E_VM_ORPHANED", "ConflictError", "the VM has no live engine",
   "stop it with mvmctl down NAME")
_c("E_VM_RUNNING", "ConflictError", "the VM is running and the verb needs it stopped",
   "stop it first (mvmctl stop NAME), or use mvmctl rm -f NAME")

# --- hypervisors (backends/qemu, backends/firecracker, backends/cloud_hypervisor)
_c("E_CH_ACCEL", "ConfigError", "Cloud Hypervisor needs KVM and TCG was requested",
   "use the qemu backend for TCG")
_c("E_CH_API", "ChApiError", "Cloud Hypervisor refused an API request", _LOGS)
_c("E_CH_BINARY", "BackendUnavailable", "the cloud-hypervisor binary is missing or cannot "
   "run", "install cloud-hypervisor, or use the qemu backend")
_c("E_CH_PLAN", "BackendError", "the launch plan was prepared by another backend object",
   "call prepare() and start() on the same backend object")
_c("E_CH_SOCKET", "ChSocketError", "Cloud Hypervisor's API socket did not answer", _LOGS)
_c("E_CH_VCPUS", "ConfigError", "Cloud Hypervisor cannot take that many vCPUs",
   "give fewer vcpus")
_c("E_DRIVE_MISSING", "ConfigError", "a drive file does not exist", "check the path")
_c("E_FC_ACCEL", "ConfigError", "Firecracker needs KVM and TCG was requested",
   "use the qemu backend for TCG")
_c("E_FC_API", "FirecrackerApiError", "Firecracker refused an API request", _LOGS)
_c("E_FC_BINARY", "BackendUnavailable", "the firecracker binary is missing or cannot run",
   "run `python -m mvm.backends.firecracker.fetch` or set MVM_FIRECRACKER")
_c("E_FC_DRIVE_ID", "ConfigError", "a Firecracker drive id is invalid or clashes",
   "give each volume a distinct name ('rootfs' is reserved)")
_c("E_FC_FETCH", "FetchError", "downloading or unpacking Firecracker failed",
   "check the network, or install firecracker yourself")
_c("E_FC_JAIL_CGROUP", "ConfigError", "a jailer cgroup setting is invalid",
   "write FILE=VALUE (e.g. cpu.max=50000) and cgroup version 1 or 2")
_c("E_FC_JAIL_ID", "ConfigError", "the jailer id is invalid",
   "use 1-64 letters, digits or '-'")
_c("E_FC_JAIL_PATH", "ConfigError", "a jailer path is not a clean absolute path",
   "give an absolute path without '..'")
_c("E_FC_JAIL_USER", "ConfigError", "the jailer uid or gid is negative",
   "give a uid and gid >= 0")
_c("E_FC_KVM", "FirecrackerKvmError", "Firecracker could not use KVM",
   "check /dev/kvm access, or use the qemu backend")
_c("E_FC_MEMORY", "ConfigError", "too little memory for Firecracker", "give more memory_mib")
_c("E_FC_PLAN", "BackendError", "the launch plan carries no Firecracker API calls",
   "start a plan made by this backend's prepare()")
_c("E_FC_SOCKET", "FirecrackerSocketError", "Firecracker's API socket did not answer", _LOGS)
_c("E_FC_VCPUS", "ConfigError", "Firecracker cannot take that many vCPUs", "give fewer vcpus")
_c("E_QMP", "BackendError", "a QMP command failed", _LOGS)
_c("E_QMP_CLOSED", "BackendError", "QEMU closed the QMP connection", _LOGS)
_c("E_QMP_CONNECT", "BackendError", "the QMP socket cannot be reached", _LOGS)
_c("E_QMP_PROTOCOL", "BackendError", "QEMU sent something that is not QMP", _REPORT)
_c("E_QMP_TIMEOUT", "BackendError", "QEMU did not answer over QMP in time", _LOGS)
_c("E_STUB_AGENT", "BackendUnavailable", "the stub backend's host agent binary cannot run",
   "run `mvmctl doctor`; the stub backend needs the guest agent built for the host")
_c("E_VMM_EXITED", "BackendError", "the VMM exited", _LOGS)
_c("E_VM_STEPS", "ConfigError", "a boot step list names a step twice or edits a missing one",
   _REPORT)
_c("E_CANCELLED", "BackendError", "the launch was cancelled before the VM was ready",
   "nothing to do: everything it started was undone")
_c("E_VMM_START", "BackendError", "the VMM failed to start", "see the VMM log in the message")
_c("E_VMM_STOP", "BackendError", "the VMM process survived SIGKILL",
   "check the host for a stuck process")

# --- networking and volumes (engine/vm/network.py, engine/request/volumes.py)
_c("E_NET_CONFIG", "ConfigError", "an MVM_NET_* setting is invalid", _CHECK)
_c("E_NET_NFT", "BackendError", "nftables is missing or refused the rules",
   "install nftables: run ./scripts/setup")
_c("E_NET_POOL_EXHAUSTED", "ConflictError", "no free address left in the VM subnet",
   "stop VMs or set MVM_NET_SUBNET to a larger subnet")
_c("E_NET_SETUP", "BackendError", "setting up the TAP network failed",
   "networked mode needs root (CAP_NET_ADMIN)")
_c("E_VOLUME_HOST", "ConfigError", "the volume's host folder does not exist",
   "create it first (an empty folder is fine)")
_c("E_VOLUME_SIZE", "ConfigError", "the volume's content is over its size",
   "give a larger SIZE_MB")
_c("E_VOLUME_SPEC", "ConfigError", "a volume mount is invalid",
   "mount each volume once, in a folder of /mnt/ (e.g. /mnt/data)")

# --- snapshots (engine/vm/snapshots.py, engine/vm/snapshot_volumes.py, backends)
_c("E_SNAPSHOT", "BackendError", "the hypervisor failed to take the snapshot", _LOGS)
_c("E_SNAPSHOT_CORRUPT", "StateError", "a snapshot's files are invalid",
   "delete the snapshot and take it again")
_c("E_SNAPSHOT_EXISTS", "ConflictError", "a snapshot of that name exists",
   "pick another --as NAME")
_c("E_SNAPSHOT_MISSING", "ConfigError", "a snapshot file does not exist",
   "take the snapshot again")
_c("E_SNAPSHOT_NAME", "ConfigError", "the snapshot name is invalid",
   "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
_c("E_SNAPSHOT_NOT_FOUND", "NotFoundError", "no snapshot of that name exists",
   "take one with: mvmctl snapshot VM --as NAME")
_c("E_SNAPSHOT_TRANSPORT", "ConfigError", "the snapshot's agent channel needs vhost-vsock, "
   "which this host lacks", "clone it on a host with vhost-vsock (modprobe vhost_vsock)")
_c("E_SNAPSHOT_UNSUPPORTED", "BackendUnavailable", "this backend cannot snapshot",
   "the qemu backend supports snapshot and clone", "BackendError")
_c("E_SNAPSHOT_VOLUME", "BackendError", "snapshotting a volume failed",
   "run ./scripts/setup (qemu-utils, coreutils)")

# --- state, plans, audit and keys (engine/store/, engine/admission/)
_c("E_AUDIT_DATA", "ConfigError", "an audit entry's data is not JSON", _REPORT)
_c("E_DB_CORRUPT", "StateError", "the state database is not readable SQLite",
   "move state.db aside and mvm starts a fresh one")
_c("E_DB_IO", "StateError", "reading or writing the state database failed",
   "check the disk under MVM_HOME")
_c("E_DB_LOCKED", "StateError", "the state database stayed locked",
   "another mvm process holds a long write; retry")
_c("E_DB_NEWER", "StateError", "the state database is from a newer mvm",
   "upgrade mvm or point MVM_HOME elsewhere")
_c("E_DB_OPEN", "StateError", "the state database cannot be opened or created",
   "check the permissions of MVM_HOME, or point MVM_HOME elsewhere")
_c("E_DISK_FULL", "StateError", "no space left on the disk",
   "free some disk space, or point MVM_HOME at a larger filesystem")
_c("E_HOME_UNWRITABLE", "StateError", "MVM_HOME cannot be written",
   "check the permissions of MVM_HOME, or point MVM_HOME at a writable dir")
_c("E_PLAN_FILE", "StateError", "a VM's launch plan cannot be read",
   "stop the VM with `mvmctl down NAME`")
_c("E_PLAN_INPUT", "ConfigError", "a plan field is malformed or out of range", _CHECK)

# --- messages between actors (engine/runtime/messages.py)
_c("E_MESSAGE_CLASS", "MessageError", "a message class cannot be registered", _REPORT)
_c("E_MESSAGE_DUPLICATE", "MessageError", "a message tag or class is registered twice", _REPORT)
_c("E_MESSAGE_INVALID", "MessageError", "a wire message is not a tagged object", _REPORT)
_c("E_MESSAGE_NOT_WIRE", "MessageError", "a reply channel was sent over a wire", _REPORT)
_c("E_MESSAGE_UNKNOWN_FIELD", "MessageError", "a wire message has unknown fields", _REPORT)
_c("E_MESSAGE_UNKNOWN_TYPE", "MessageError", "a wire message has an unknown type tag", _REPORT)

# --- the fleet on Ray (mvm/fleet/)
_c("E_FLEET_FULL", "ConflictError", "every node that could run the VM is full right now",
   "stop a VM, add a node, or start it again later: mvmctl fleet ls")
_c("E_FLEET_NAME_TAKEN", "ConflictError", "a VM of that name already runs in the fleet",
   "pick another name, or stop that VM first: mvmctl fleet down NAME")
_c("E_FLEET_NODE_LOST", "BackendError", "the VM's node left the Ray cluster",
   "see where the fleet restarted it: mvmctl fleet ls")
_c("E_FLEET_NOT_INSTALLED", "BackendUnavailable", "the fleet needs Ray, which is not installed",
   "install the extra: pip install 'mvm-engine[fleet]'")
_c("E_FLEET_UNREACHABLE", "BackendUnavailable", "no Ray cluster answers at that address",
   "start one with: ray start --head --resources='{\"mvm_host\": 1, ...}', or fix --address")
_c("E_FLEET_UNSCHEDULABLE", "ConfigError", "no node of the fleet can ever run the request",
   "ask for fewer vCPUs/MiB or other labels, or add a bigger node: mvmctl fleet nodes")

# --- benchmarks (bench/, mvm/cli/bench_commands.py)
_c("E_BENCH_AGENT", "BenchAgentError", "the guest agent under test misbehaved", _REPORT)
_c("E_BENCH_BACKEND", "ConfigError", "bench boot supports only the qemu backend here",
   "firecracker/cloud-hypervisor guests need a host with working KVM")
_c("E_BENCH_BUDGET", "BudgetExceeded", "a benchmark exceeded its time budget",
   "raise the budget or find the slow step")
_c("E_BENCH_PLOT", "ConfigError", "--plot needs matplotlib",
   "./scripts/setup --bench (or .venv/bin/pip install 'mvm-engine[bench]')")
_c("E_BENCH_RESULT", "ConfigError", "a benchmark result file cannot be read", "check the path")
# fmt: on


# Built once at import; a code registered twice is caught by tests/unit/test_error_codes.py.
ENTRIES: tuple[CodeInfo, ...] = tuple(_ENTRIES)
CODES: dict[str, CodeInfo] = {info.code: info for info in ENTRIES}


def lookup(code: str) -> CodeInfo | None:
    """The registry entry for ``code``; None for a code nobody registered (a guest may
    send one: it is still shown, without a default hint)."""
    return CODES.get(code)


def default_hint(code: str) -> str | None:
    """What ``MvmError.one_line()`` shows when the raise site gave no hint."""
    info = CODES.get(code)
    return info.hint if info is not None else None
