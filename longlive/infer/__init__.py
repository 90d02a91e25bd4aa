"""longlive.infer"""
