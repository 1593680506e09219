"""mprec-harness: measure every (embedding representation, hardware) path of a DLRM model.

See README.md for the two commands a new user needs and docs/ for the how-tos.
"""

__version__ = "0.1.0"
