"""Versioned releases of whole runs (``gflow publish``, ``gflow versions``): the versions
and ``latest`` (:mod:`gflow_dist.release.versions`) in a folder or an S3 prefix
(:mod:`gflow_dist.release.stores`). Not to be confused with the swap that publishes one
output folder (:func:`gflow_dist.outputs.publish_folder`)."""
