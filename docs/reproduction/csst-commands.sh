#!/usr/bin/env bash
# The worked example of docs/predict.md, end to end: a CSST wide-field r-band dataset
# (configs/csst.yaml), its 4 jobs, a calibrated report, 100 test images written as FITS
# cutouts with a WCS, and their catalogue. About 20 minutes on 2 cores.
# Usage: docs/reproduction/csst-commands.sh WORK   (run from the repository, lenshpc installed)
set -euo pipefail
W=${1:?usage: $0 WORK}
NP=${NP:-2}
mkdir -p "$W"
run() { mpirun -n "$NP" --bind-to none python -m mpi4py -m lenshpc "$@"; }
cfg=configs/csst.yaml
run simulate --config $cfg --out "$W/csst" --no-progress
for j in 0 1 2 3; do
    run train --config $cfg --data "$W/csst" --out "$W/csst-runs" --job $j
done
run evaluate --config $cfg --data "$W/csst" --runs "$W/csst-runs" --out "$W/csst-report" \
    --mc-samples 20
python - "$W" <<'PY'
import sys
import h5py
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]; w.wcs.crval = [150.0, 2.0]
w.wcs.crpix = [32.5, 32.5]; w.wcs.cdelt = [-0.074 / 3600, 0.074 / 3600]
with h5py.File(f"{sys.argv[1]}/csst/dataset.h5") as f:
    test = np.flatnonzero(f["split"][...] == -1)[:100]
    fits.PrimaryHDU(f["images"][list(test)], header=w.to_header()).writeto(
        f"{sys.argv[1]}/cutouts.fits", overwrite=True)
PY
run predict --config $cfg --runs "$W/csst-runs" --mc-samples 20 --no-progress \
    --calibration "$W/csst-report/calibration.json" --out "$W/csst-catalogue.fits" "$W/cutouts.fits"
