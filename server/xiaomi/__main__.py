from server.xiaomi.cli import main

raise SystemExit(main())
