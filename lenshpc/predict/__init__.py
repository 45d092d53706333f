"""lenshpc predict: observed (or simulated) cutouts through the trained networks into a
catalogue of theta_E, q, e1, e2 with their spread over folds and MC-dropout passes."""
