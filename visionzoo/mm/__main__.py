from visionzoo.mm.runner import main

raise SystemExit(main())
