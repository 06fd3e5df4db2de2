"""Benchmarks and FlickrHub's own load driver (`make bench`)."""
