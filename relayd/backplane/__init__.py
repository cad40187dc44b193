"""
Backplanes: where fan-out goes when one relayd process is not enough.

The in-memory bus (relayd.bus.MemoryBus) is one process. RedisBus keeps that bus for the
subscribers of this node and relays every publish through Redis pub/sub to the other nodes, so an
app publishes and subscribes exactly as it does on one node.
"""
