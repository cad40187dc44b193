"""Close codes relayd sends, beyond those Autobahn sends on its own (1002, 1007, 1009, ...)."""

NORMAL = 1000
GOING_AWAY = 1001  # drain on stop
UNSUPPORTED_DATA = 1003  # binary where a protocol takes text
POLICY = 1008
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012  # the room moved to another node: reconnect (and resume)
TRY_AGAIN_LATER = 1013  # a shared service (Redis) is unreachable for now
RATE_LIMITED = 4029  # sustained sending above the rate limit
SLOW_CONSUMER = 4008  # the send backlog passed its size or age limit
REPLACED = 4001  # another connection took over this identity

