"""longlive.eval"""
