"""The gRPC simulation service."""
