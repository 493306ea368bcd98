"""mvm.backends.abc: the protocol every VMM backend implements and the values it takes
(VmSpec in, LaunchPlan out, VmmHandle while it runs)."""
