"""``python -m lenshpc`` (also ``mpirun -n N python -m mpi4py -m lenshpc ...``)."""
import sys

from lenshpc.cli import main

sys.exit(main())
