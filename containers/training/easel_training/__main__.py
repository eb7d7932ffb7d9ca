from easel_training.cli import main

raise SystemExit(main())
