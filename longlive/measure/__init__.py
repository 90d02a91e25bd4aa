"""Measurement every layer may use: device-event timers, memory peaks, the environment manifest, and the roofline
(FLOPs, measured ceilings, MFU). It imports nothing of the project but model shapes, so infer, train, bench and the
runner can all depend on it without cycles."""
