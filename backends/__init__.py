"""mvm.backends"""
