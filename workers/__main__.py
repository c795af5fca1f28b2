import sys

from workers.commands.cli import main

sys.exit(main())
