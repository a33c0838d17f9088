"""``python -m backends.relay``: run a relay broker (:mod:`backends.relay.broker`)."""

from backends.relay.broker import main

raise SystemExit(main())
