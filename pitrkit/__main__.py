import sys

from pitrkit.entry import main

sys.exit(main())
