"""The gRPC transport (SPEC 7): Triton's ``inference.GRPCInferenceService`` over ``DataPlane``.

The service definition is Triton's own, from ``tritonclient[grpc]`` (its generated
``service_pb2``, ``service_pb2_grpc`` and ``model_config_pb2``): a maintained package that
every Triton client already depends on, so the messages are exactly the ones the clients
send, with no ``.proto`` files copied here to drift from them.
"""
