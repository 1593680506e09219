"""What runs: the framework-neutral workload spec, its analytic cost, and the torch DLRM.

`spec` and `cost` never import torch, so a dry run can plan a 2 GB-table path in well under a second
of CPU and without allocating it; `dlrm` and the representations' `module` files hold the torch code.
"""
