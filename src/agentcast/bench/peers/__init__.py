"""Peer servers of the fan-out benchmark: launchers (:mod:`.launch`), the servers the
benchmark runs itself (:mod:`.socketio_server`, :mod:`.ws_redis_server`, :mod:`.node`,
:mod:`.nats`) and the load's wire adapters for them (:mod:`.clients`)."""
