"""The thin Ray layer: starting or joining a cluster and running the pure stages on it."""
