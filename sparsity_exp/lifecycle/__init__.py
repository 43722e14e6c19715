"""A run folder's life: where a run writes and who may write there, what a checkpoint holds, files
that are never half-written, stopping on a signal and continuing later.

    folders.py     which folder a run writes to (``trainer.resume``), whether and how it continues
                   (``plan``), the lock that keeps one process per folder
    checkpoint.py  checkpoint files (save, list, load, prune) and the trainer state they hold
                   (``capture`` / ``restore``)
    state.py       random states and the training stream's position as plain tensors
    preempt.py     SIGTERM/SIGUSR1: finish the step, checkpoint, exit for requeueing
    (the one atomic writer, temporary file, fsync, rename, is ``sparsity_exp/atomic.py`` on the ground
     floor: record.py and collect.py use it too)
"""
