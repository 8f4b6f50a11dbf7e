"""`python -m localhub --root DIR [--port P]`: serve a local repository folder as a Hub."""

from localhub.server import main

raise SystemExit(main())
