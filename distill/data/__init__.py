"""RAW data: Bayer packing, unprocessing of sRGB photos, embedded data and dataset loaders."""
