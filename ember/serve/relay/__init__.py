"""gRPC front-end processes: the gRPC protocol work spread over several interpreters.

One Python process tops out at a few thousand gRPC requests/s: ``grpc.aio`` spends a few hundred
microseconds of interpreter time on every call, and that time competes with the batcher and the
model instances for the one interpreter lock. With ``--grpc-front-ends N`` the server starts N
*front-end processes* that listen on the gRPC port together (``SO_REUSEPORT``: the kernel spreads
client connections over them) and do all of gRPC's work. They know nothing of models: every call
is relayed, as the serialized request message, over a Unix socket to the server process (the
*hub*), which decodes it and answers it exactly as its own gRPC service would (same code, same
statistics, same errors), and sends back the serialized response or the error's code and
message. The server process keeps everything with state: the repository, the batchers, the
instances, the statistics; and it answers only relay frames, a few tens of microseconds each.

One module per concern, so each side imports only what it runs:

- ``wire``: the frame format on the Unix socket and the method table, shared by both ends;
- ``hub``: the server process's end (``RelayHub``) and the supervisor of the front-end
  processes (``FrontEnds``: start, watch, restart, stop);
- ``frontend``: a front-end process, ``python -m ember.serve.relay.frontend --hub SOCKET
  --host HOST --port PORT`` (``python -m ember.serve.relay`` runs the same).

Nothing is imported here: the front-end process should not load the hub's code, nor the server
the front end's.
"""
