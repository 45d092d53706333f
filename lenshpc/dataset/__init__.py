"""The on-disk format of a dataset: this package owns it; every reader and writer goes through it.

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
images and checks shards through it.
"""

SHARDS = "shards"
INDEX = "dataset.h5"
CONFIG = "config.yaml"
