"""Run a stream of shell commands on GPUs, one job per free GPU slot."""

__version__ = "0.2.0"
