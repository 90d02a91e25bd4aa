"""longlive.train"""
