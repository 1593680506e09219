"""Inputs: the synthetic Criteo-shaped generator and the pools of batches the timing loop cycles."""
