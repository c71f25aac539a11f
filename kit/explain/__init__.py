"""kit.explain"""
