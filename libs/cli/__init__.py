"""`flickrhub`: the operator command line (authorize Flickr users, list and revoke stored tokens)."""
