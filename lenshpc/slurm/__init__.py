"""lenshpc.slurm"""
