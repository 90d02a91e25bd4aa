"""longlive.model"""
