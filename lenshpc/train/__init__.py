"""lenshpc.train: Horovod data-parallel training of the modified AlexNet (docs/method.md section 2).

One job = one dropout model on one fold. Modules, in the order a job meets them:

- ``cli``: the ``train`` sub-command;
- ``plan``: the job's plan, checked before TensorFlow starts (lock, config, dataset, fold,
  checkpoint);
- ``run``: the Horovod driver;
- ``process``: the process itself: signals, Horovod's start, the device pinned, the memory limit;
- ``device``: which device, precision step and input a rank uses (pure decisions);
- ``data``: dataset checks, fold items, target statistics, a rank's share in memory,
  per-epoch order, batches;
- ``stream``: a rank's share streamed from its shards during training;
- ``preprocess``: the per-image normalisation (shared with evaluate);
- ``model``: the network and its weighted loss;
- ``callbacks``: the Keras callbacks of the driver;
- ``record``: what a job records at each epoch end and when it finishes;
- ``state``: the job folder (checkpoint, history.csv, run.json) and its atomic writes.
"""
