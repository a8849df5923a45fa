"""How job ids reach workers: the queue transports (in-process or Dramatiq on Redis) and the
registry of the workers that consume them."""
