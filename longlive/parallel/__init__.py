"""longlive.parallel"""
