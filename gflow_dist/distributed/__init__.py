"""The thin distributed layer: Ray sessions and the Ray runners of the pipeline's stages.

No science lives here: ensemble members, catalog shards and partitions, and the
evaluation's draws and classifier run as Ray tasks and actors that call the library's
plain functions (:mod:`gflow_dist.distributed.runners`).
"""
