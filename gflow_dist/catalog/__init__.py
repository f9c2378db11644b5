"""Star catalogs from upsampled stars: observables, HEALPix partitions, writers and figures."""
