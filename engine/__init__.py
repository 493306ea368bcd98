"""mvm.engine"""
