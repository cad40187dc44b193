from twisted.application.service import ServiceMaker

relayd = ServiceMaker(
    "relayd",
    "relayd.tap",
    "Live real-time servers for multiplayer games, over WebSocket",
    "relayd",
)
