"""The embedded demo: a procedural captioned shapes dataset and a procedural text-image alignment checker."""
