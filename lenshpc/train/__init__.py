"""lenshpc.train: Horovod data-parallel training of the modified AlexNet (docs/method.md section 2).

One job = one dropout model on one fold. Modules: ``cli`` (the ``train`` sub-command),
``run`` (checks, then the Horovod driver), ``data`` (dataset checks, folds, a rank's share
read into memory, per-epoch order, batches), ``model`` (network and weighted loss),
``state`` (checkpoint, history.csv, run.json; atomic writes).
"""
