"""Generated protobuf and gRPC code for the wire contract ``liaison.v1`` (do not edit)."""
