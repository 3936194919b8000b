from seqrec.cli.main import main

raise SystemExit(main())
