"""longlive.bench"""
