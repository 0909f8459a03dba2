"""Anomaly detection methods; each is a Detector returning a Result."""
