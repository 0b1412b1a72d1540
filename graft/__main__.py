"""`python -m graft ...` is the `graft` command."""

from graft.pipeline.cli import main

raise SystemExit(main())
