"""mvm.backends.qemu"""
