from agc.cli import main

raise SystemExit(main())
