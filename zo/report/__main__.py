from zo.report.cli import main

raise SystemExit(main())
