"""The on-disk format of a dataset: its file names and layout, and its shard and index files.

Layout of a dataset directory DIR::

    DIR/config.yaml              resolved config of the run (written first)
    DIR/shards/shard-NNNNN.h5    items [k*m, (k+1)*m): images, labels, truth (m items per
                                 shard, from dataset.shard_mb or shard_size)
    DIR/dataset.h5               the index, written after every shard (format 2):
                                   labels, truth, split   ordinary datasets (N, ...)
                                   shards/{name,start,n,checksum,bytes}   the shard table
                                   images                 a virtual dataset over the shards
    DIR/dataset.done.json        the completion marker (lenshpc.lock), written last

:mod:`lenshpc.dataset.shards` writes, reads and checks one shard file;
:mod:`lenshpc.dataset.index` builds ``dataset.h5`` from the shards, reads it, and reads
images and checks shards through it; :mod:`lenshpc.dataset.columns` names the label and
truth columns; :mod:`lenshpc.dataset.identity` says which config sections define a
dataset (the fingerprint in ``simulate.json``); :mod:`lenshpc.dataset.folder` is the
folder as a whole: the shard layout by config, "done" (:func:`~lenshpc.dataset.folder.
dataset_done`) and the one open-and-validate every stage uses; :mod:`lenshpc.dataset.
summary` is ``lenshpc dataset info|verify``. ``config.yaml``, ``simulate.json`` and the
completion marker are written by :mod:`lenshpc.simulate` (its plan and run).
"""

SHARDS = "shards"
INDEX = "dataset.h5"
CONFIG = "config.yaml"
