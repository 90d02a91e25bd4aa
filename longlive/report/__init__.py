"""longlive.report"""
