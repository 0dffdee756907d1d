"""(not built yet)"""
