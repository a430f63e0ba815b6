import sys

from ssodlib.cli import main

sys.exit(main())
