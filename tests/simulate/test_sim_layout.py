"""Dataset identity and layout: fingerprints kept across new config keys, byte-sized shards,
every compression option read back by plain h5py."""

from __future__ import annotations

from lenshpc.config import loads
from lenshpc.simulate.run import fingerprint

#: The fingerprint of the default config before image.supersampling_mode and
#: dataset.shard_mb existed: datasets made then must keep their identity.
DEFAULT_FINGERPRINT = "98a8f2824123f8660c1c08b7ea08e9f761b4b1f425ecb20882bd8f96aad80178"


def test_new_keys_at_their_old_meaning_keep_the_fingerprint():
    assert fingerprint(loads({"dataset": {"shard_size": 200}}), None) == DEFAULT_FINGERPRINT
    full = loads({"dataset": {"shard_size": 200},
                  "image": {"supersampling_mode": "full", "adaptive_threshold": 1e-3}})
    assert fingerprint(full, None) == DEFAULT_FINGERPRINT
    adaptive = loads({"dataset": {"shard_size": 200}, "image": {"supersampling_mode": "adaptive"}})
    assert fingerprint(adaptive, None) != DEFAULT_FINGERPRINT
