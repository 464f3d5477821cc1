"""Parts of the server that speak gRPC: servicer, server assembly, interceptors."""
