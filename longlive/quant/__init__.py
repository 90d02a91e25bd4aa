"""longlive.quant"""
