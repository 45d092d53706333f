"""lenshpc: simulate, train and evaluate CNN studies of strong gravitational lenses on HPC."""
__version__ = "0.1.0"
