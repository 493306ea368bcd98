"""mvm.backends.guest"""
