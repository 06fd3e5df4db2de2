"""A local stand-in for the Flickr REST API: OAuth 1.0a checks, fake data, planned faults.

A separate deployable: FlickrHub's services never import it; they reach it over HTTP.
"""
