"""Moving repositories between machines: the bundle file format, bundles, lock files."""
