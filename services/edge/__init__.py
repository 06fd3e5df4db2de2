"""FlickrHub's REST edge: REST/JSON ⇄ gRPC the way grpc-gateway v2 does, routes from google.api.http."""
