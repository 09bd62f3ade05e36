"""Reading what users give: HDF5 inputs (files, globs, Eiger masters, virtual datasets),
frame selections and masks, checked and turned into a job's segments and label image."""
