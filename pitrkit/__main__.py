import sys

from pitrkit.wal.agent_client import main

sys.exit(main())
