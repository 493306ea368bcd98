"""mvm.engine.request: what a user asks for (VmRequest, port mappings, volumes, mvm.toml),
validated into frozen values before anything is started."""
