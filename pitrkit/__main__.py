import sys

from pitrkit.cli import main

sys.exit(main())
