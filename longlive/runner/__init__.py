"""longlive.runner"""
