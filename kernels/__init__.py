"""Compute kernels: plain reference kernels that define the bits, fast Numba kernels beside them."""
