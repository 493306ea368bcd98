"""mvm.actors"""
